# `make demo` and `make test` work on a fresh clone: they create .venv when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# nvcc needs CUDA_HOME to link; use the usual place when the user has not set it.
export CUDA_HOME ?= $(wildcard /usr/local/cuda)

.PHONY: install test test-fast demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# Everything but the slow nvcc compilation tests.
test-fast: $(STAMP)
	$(PY) -m pytest -m 'not compile'

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash examples/demo.sh

# The speed benchmarks (seconds to minutes each); the learning curves and the GPU check
# are run by hand (see the README).
BENCHES := ops train sample metrics colorhist report
bench: $(STAMP)
	for b in $(BENCHES); do $(PY) benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) demo-out
