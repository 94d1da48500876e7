# The two commands of the README: `make demo` and `make test`. Both create .venv and install the pinned
# dependencies (constraints.txt: the CPU torch wheel) and the package with its C++ extension first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test install build bench bench-record-cpu gpu-data dist-check clean

$(STAMP): pyproject.toml setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch setuptools wheel ninja
	DFKD_FAST_NO_EXT=1 $(PIP) install -q -c constraints.txt --no-build-isolation -e ".[dev,graph]"
	touch $@

install: $(STAMP)

# dfkd_fast._C, rebuilt when csrc/ changes (ninja recompiles only the files that changed).
EXT_STAMP := build/.ext-built
$(EXT_STAMP): $(STAMP) setup.py $(shell find csrc -type f 2>/dev/null)
	$(BIN)/python setup.py -q build_ext --inplace
	@mkdir -p build && touch $@

build: $(EXT_STAMP)

demo: build
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(BIN)/dfkd-fast demo

# Two workers on the two cores of the CI machine; every test and every benchmark case runs once.
test: build
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest tests bench --benchmark-disable -q -n 2 --durations=20 $(PYTEST_ARGS)

bench: build
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest bench --benchmark-autosave $(PYTEST_ARGS)

# The CPU record bench/results/cpu/bench.json (every case, one thread; about 2 min on the 2-core VM) and the README
# tables generated from it.
bench-record-cpu: build
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest bench -q -p no:cacheprovider \
		--benchmark-json bench/results/cpu/bench.json
	$(BIN)/python bench/report.py bench/results/cpu/bench.json --readme README.md

# The git-ignored .gpu/ folder that bench/gpu_session.sh reads on a lent GPU machine.
gpu-data:
	bash bench/prepare_gpu_data.sh

# sdist -> wheel built from it -> fresh venv -> `import dfkd_fast._C` and `dfkd-fast env` elsewhere (.ci/dist-check).
dist-check: $(STAMP)
	PY=$(BIN)/python PYTHON=$(PYTHON) .ci/dist-check

clean:
	rm -rf build dfkd_fast/_C*.so *.egg-info
