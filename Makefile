# queuectl developer tasks. `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test test-fast demo lint clean bench deb install uninstall

# Packaging (README "Install"): `make deb` builds dist/queuectl_VERSION_all.deb from a clean
# copy of the tree; `make install` puts the same files under DESTDIR/PREFIX, without dpkg.
DIST          ?= dist
DESTDIR       ?=
PREFIX        ?= /usr/local
SYSTEM_PYTHON ?= /usr/bin/python3

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# compat: a plain path entry, no import-hook finder for every cold `enqueue` to load;
	# setuptools calls the mode transitional, and says so at length on every install.
	PYTHONWARNINGS="ignore:Compat editable installs" \
	    $(BIN)/pip install --quiet -e '.[test,postgres]' --config-settings editable_mode=compat
	touch $(STAMP)

# Everything (what CI runs). The contract suite mostly waits on leases and timers, so it runs
# beside the rest (scripts/side-by-side.sh), its output after the rest's; either failing fails.
test: $(STAMP)
	@sh scripts/side-by-side.sh "$(BIN)/pytest -q --ignore=tests/contract" \
	    "tests/contract: $(BIN)/pytest -q -p no:cacheprovider tests/contract"

# While working (under 2 min): the contract suite on every backend, beside every other test
# marked neither slow nor needing systemd, PostgreSQL, root or the package (README "Tests").
FAST_MARKS := not (slow or systemd or postgres or root or deb)
# Three parts, as `test` runs two: the quick tests print as they go, then the contract
# suite's two backends ("sqlite" and "not sqlite" split its tests by backend parameter).
test-fast: $(STAMP)
	@sh scripts/side-by-side.sh \
	    "$(BIN)/pytest -q --durations=5 -m '$(FAST_MARKS)' --ignore=tests/contract" \
	    "tests/contract, SQLite: $(BIN)/pytest -q -p no:cacheprovider --durations=5 -k sqlite tests/contract" \
	    "tests/contract, PostgreSQL: $(BIN)/pytest -q -p no:cacheprovider --durations=5 -k 'not sqlite' tests/contract"

demo: $(STAMP)
	QUEUECTL=$(BIN)/queuectl sh scripts/demo.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

deb:
	packaging/build-deb.sh $(DIST)

install:
	packaging/install.sh "$(DESTDIR)" "$(PREFIX)" "$(SYSTEM_PYTHON)"

uninstall:
	packaging/install.sh --uninstall "$(DESTDIR)" "$(PREFIX)" "$(SYSTEM_PYTHON)"

# Measure queuectl (~30 min): bench/results/latest.json and a Markdown table. BENCH_ARGS=--quick
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
