# The two commands of the README: `make train` and `make test`.
# Both create .venv on first use (tools/ensure_venv.sh) and reinstall only when the
# requirements change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHON VENV

.PHONY: venv test train lint bench-venv bench-quick bench clean

venv:
	@tools/ensure_venv.sh

test: venv
	$(PY) -m pytest

train: venv
	$(VENV)/bin/sindyrl-ros train --task pendulum $(TRAIN_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

bench-venv:
	@tools/ensure_venv.sh benchmarks/requirements.txt

bench-quick: bench-venv
	$(PY) benchmarks/sample_efficiency.py --quick

bench: bench-venv
	$(PY) benchmarks/sample_efficiency.py

clean:
	rm -rf $(VENV) build install log .pytest_cache
