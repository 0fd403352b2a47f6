# Your own images: data/my_dataset/{train,val}/<class name>/*.jpg
# Set num_classes in the model head to the number of class folders.
dataset_type = 'ImageFolderDataset'
data_root = 'data/my_dataset'
image_size = 224
train_pipeline = [
    dict(type='RandomCrop', size=image_size, padding=16),
    dict(type='RandomFlip', prob=0.5),
]

train_dataloader = dict(
    batch_size=32,
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type=dataset_type, data_root=data_root + '/train',
                 size=image_size, pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=2,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type=dataset_type, data_root=data_root + '/val',
                 size=image_size),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))

test_dataloader = val_dataloader
test_evaluator = val_evaluator
