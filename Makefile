# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each creates .venv on first use, reinstalls only when the requirements change, and makes
# .venv again when it is broken.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint format bench browser-deps clean

# A .venv whose python cannot run pip (an interrupted creation, a removed interpreter) is made
# again: its stamp is forgotten here, and the rule below starts it afresh.
ifneq ($(wildcard $(STAMP)),)
ifneq ($(shell $(BIN)/python -m pip --version >/dev/null 2>&1 && echo ok),ok)
$(shell rm -f $(STAMP))
endif
endif

$(STAMP): pyproject.toml requirements-dev.txt
	$(BIN)/python -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -qq --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -qq --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install -qq --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/crossattn demo

# Headless Chromium for the browser tests: installed with apt when missing and running as root.
browser-deps:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "installing chromium with apt-get (browser tests)"; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks conftest.py
	$(BIN)/ruff format --check src tests benchmarks conftest.py

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks conftest.py
	$(BIN)/ruff format src tests benchmarks conftest.py

test: $(STAMP) browser-deps lint docs
	$(BIN)/python -m pytest

# The documentation site, offline, into site/: a broken link or an unreadable docstring fails it.
.PHONY: docs
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The quick loop while editing: tests/ without the slow, browser and interop tests (and without
# the documentation blocks), about a minute on two cores; the ten slowest are listed so that a
# new slow test shows. One intra-op thread: the shapes are tiny, and on a busy machine a second
# thread makes every kernel wait (test_backend_lse.py took 48 s with two, 3 s with one, at load 6).
# Lint is left to `make lint` (seconds) and `make test`, so that a change not yet formatted
# still gets its tests run.
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -m "not slow and not browser and not interop" \
		--durations=10

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_op.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache build site *.egg-info src/*.egg-info
