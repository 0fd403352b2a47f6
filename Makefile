# mmbackbone: `make demo` trains the default model, `make test` runs the suite.
# Both create .venv on first use and install everything they need into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1
DEMO_CONFIG := configs/resnet/resnet18_digits.py
PYTEST_WORKERS ?= 2

.PHONY: install demo test clean

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

# The suite, then every docstring `Example:` of the library run as a doctest
# (a second run: --doctest-modules over tests/ would import the test
# modules a second time, as doctest modules).
test: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --durations=15 tests
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --doctest-modules mmbackbone

clean:
	rm -rf $(VENV) work_dirs .pytest_cache
