# Two entry points, as README.md says: `make demo` trains offline, `make test` runs the suite.
# The virtual environment lives in .venv and is reused while the requirements are unchanged.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-lowest test-slurm lint

# requirements.txt says the supported range; constraints.txt pins the versions last tested.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

setup: $(STAMP)

DEMO_SAVE := checkpoints/fashionmnist-resnet20

# ResNet-20 (CIFAR network and recipe) on all 70,000 Fashion-MNIST images, offline.
# -resume of its own folder: run again, it continues where it stopped (or says it is done).
# A stop (Ctrl-C, SIGTERM: the checkpoint is saved, exit 130 / 143) ends make quietly.
demo: setup
	bash scripts/get_fashion_mnist.sh
	mkdir -p $(DEMO_SAVE)
	$(PY) main.py -dataset fashionmnist -netType resnet -depth 20 -batchSize 128 \
		-nEpochs 5 -save $(DEMO_SAVE) -resume $(DEMO_SAVE) \
		|| { status=$$?; case $$status in 130|143) echo "=> run make demo again to continue it";; \
		     *) exit $$status;; esac; }

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

# The lowest supported torch (requirements.txt), in a venv of its own: every module imports,
# and end-to-end runs (train, resume, test-only, fine-tune, bad input) behave the same.
LOWEST := .venv-lowest
LOWEST_TORCH := torch==2.11.0 torchvision==0.26.0
SMOKE := tests/test_architecture.py tests/test_cli.py tests/test_devices.py tests/test_in_process.py \
	tests/test_trust.py tests/test_hf.py tests/test_export.py
# Parquet data and the exports on the lowest torch too; without onnxscript, as on machines that
# have only onnx and onnxruntime, so the TorchScript exporter's path runs there.
LOWEST_EXTRAS := onnx==1.23.2 onnxruntime==1.32.0 safetensors==0.8.0 pyarrow==26.0.1 datasets==5.2.0

test-lowest:
	test -x $(LOWEST)/bin/python || $(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install -q $(LOWEST_TORCH) -r requirements.txt pytest==9.2.0 \
		$(LOWEST_EXTRAS)
	$(LOWEST)/bin/python -m pytest $(SMOKE)

# A one-node SLURM on this machine (as root), then the runs under it (tests/slurm): requeue on a
# time limit. make test leaves them out.
test-slurm: setup
	bash scripts/get_fashion_mnist.sh
	bash scripts/slurm/local_cluster.sh
	SLURM_TESTS=1 $(PY) -m pytest tests/slurm
