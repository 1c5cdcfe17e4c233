# Two entry points, as README.md says: `make demo` trains offline, `make test` runs the suite.
# The virtual environment lives in .venv and is reused while the requirements are unchanged.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

setup: $(STAMP)

DEMO_SAVE := checkpoints/fashionmnist-resnet20

# ResNet-20 (CIFAR network and recipe) on all 70,000 Fashion-MNIST images, offline.
# -resume of its own folder: run again, it continues where it stopped (or says it is done).
demo: setup
	bash scripts/get_fashion_mnist.sh
	mkdir -p $(DEMO_SAVE)
	$(PY) main.py -dataset fashionmnist -netType resnet -depth 20 -batchSize 128 \
		-nEpochs 5 -save $(DEMO_SAVE) -resume $(DEMO_SAVE) \
		|| { status=$$?; echo "=> make demo stopped; run make demo again to continue it"; exit $$status; }

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest
