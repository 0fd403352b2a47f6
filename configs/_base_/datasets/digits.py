# scikit-learn's handwritten digits, upsampled to 32x32 RGB (shipped offline).
# Fixed split: 1438 train / 359 val images. Pixel mean 77.8, std 82.5
# (uint8 scale, training split): the models' data_preprocessor uses them.
dataset_type = 'DigitsDataset'
train_pipeline = [dict(type='RandomCrop', size=32, padding=2)]

train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type=dataset_type, split='train', pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type=dataset_type, split='val'),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))

test_dataloader = val_dataloader
test_evaluator = val_evaluator
