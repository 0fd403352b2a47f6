# mmbackbone: `make demo` trains the default model, `make test` runs the suite.
# Both create .venv on first use and install everything they need into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1
DEMO_CONFIG := configs/resnet/resnet18_digits.py
PYTEST_WORKERS ?= 2

.PHONY: install demo demo-bf16 demo-det demo-seg test clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py requirements/runtime.txt requirements/tests.txt requirements/peers.txt requirements/peers-deps.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[tests,optional]'
	# peer libraries for the equivalence and downstream tests: their pins refuse mmcv-lite
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/peers.txt
	$(BIN)/python -m pip install --quiet -r requirements/peers-deps.txt
	touch $@

# One intra-op thread: on 32x32 digits a second thread costs more than it
# gives (measured: 84 s CPU with one thread, 306 s with two).
demo: install
	OMP_NUM_THREADS=1 $(BIN)/python tools/train.py $(DEMO_CONFIG) --work-dir work_dirs/demo

# The demo in mixed precision: bfloat16 autocast on the CPU (docs/training.md).
demo-bf16: install
	OMP_NUM_THREADS=1 $(BIN)/python tools/train.py $(DEMO_CONFIG) --amp bf16 --work-dir work_dirs/demo_bf16

# Downstream, with mmdet's and mmseg's own tools (shipped in their wheels
# under .mim/): train on the embedded digits sets (written under data/ on
# first use), evaluate at the end of training, then predict one image.
# mmbackbone.mmcv_ops (the configs' custom_imports) stands in for the
# compiled mmcv ops that mmcv-lite lacks.
DET_CONFIG := configs/downstream/mmdet/retinanet_r18_fpn_digits.py
SEG_CONFIG := configs/downstream/mmseg/upernet_r18-v1c_digits.py
TOOLS_OF = $$($(BIN)/python -c 'import os, $(1); print(os.path.join(os.path.dirname($(1).__file__), ".mim", "tools"))')

demo-det: install
	$(BIN)/python $(call TOOLS_OF,mmdet)/train.py $(DET_CONFIG) --work-dir work_dirs/demo_det
	$(BIN)/python tools/predict.py $(DET_CONFIG) $$(ls work_dirs/demo_det/epoch_8-*.pth) \
		data/digits_det/val/000001.png --out-dir work_dirs/demo_det/predictions

demo-seg: install
	$(BIN)/python $(call TOOLS_OF,mmseg)/train.py $(SEG_CONFIG) --work-dir work_dirs/demo_seg
	$(BIN)/python tools/predict.py $(SEG_CONFIG) $$(ls work_dirs/demo_seg/iter_800-*.pth) \
		data/digits_seg/img_dir/val/000001.png --out-dir work_dirs/demo_seg/predictions

# The suite, then every docstring `Example:` of the library run as a doctest
# (a second run: --doctest-modules over tests/ would import the test
# modules a second time, as doctest modules).
test: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --durations=15 tests
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --doctest-modules mmbackbone

clean:
	rm -rf $(VENV) work_dirs data/digits_det data/digits_seg .pytest_cache
