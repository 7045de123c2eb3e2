# Single entry point. `make book` builds the book on the embedded default on a
# fresh machine (virtual environment, install, organism training, notebooks,
# book); `make test` runs the tests.
#
# Environment: the active virtual environment ($VIRTUAL_ENV) or conda environment ($CONDA_PREFIX, not
# the base env) when one is active; otherwise .venv here, created on first use (as CI does: .ci/run ->
# make test on a fresh machine). `make VENV=path` picks another one.
PYTHON ?= python3
ifneq ($(VIRTUAL_ENV),)
ACTIVE_ENV := $(VIRTUAL_ENV)
else ifneq ($(and $(CONDA_PREFIX),$(filter-out base,$(CONDA_DEFAULT_ENV))),)
ACTIVE_ENV := $(CONDA_PREFIX)
endif
VENV ?= $(if $(ACTIVE_ENV),$(ACTIVE_ENV),.venv)
PY := $(VENV)/bin/python
# Installed only when the environment has no torch yet (conda users: install pytorch from conda first).
# CPU build found locally on the project's machines; on a GPU machine install the
# torch build that fits it first (or set TORCH_SPEC=torch).
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= default
# `make book` needs the package only; `make test` adds the test tools and lm-evaluation-harness (the `real` extra)
STAMP := $(VENV)/.triphase-installed
TEST_STAMP := $(VENV)/.triphase-test-installed
# How the package and its dependencies are installed (torch, above, always by pip: it finds the local CPU
# wheel). `uv` (installed into the environment first) resolves, downloads and compiles in parallel: about
# 40 s for the package's dependencies where pip took 60-120 s on the project's machine; when uv cannot be
# had or fails, pip does the install. `make INSTALLER=pip` skips uv.
INSTALLER ?= uv
# in a variable: $(call) would split its argument at a literal comma
TEST_EXTRAS := test,real
define install_package
	if [ "$(INSTALLER)" = uv ] && $(PY) -m pip install --quiet uv && $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) $(1); \
	then :; else $(PY) -m pip install --quiet $(1); fi
endef

.PHONY: book test test-fast install run build clean-book bench

book: $(STAMP)
	$(PY) -m triphase.cli run $(CONFIG)

test: $(TEST_STAMP)
	$(PY) -m pytest

test-fast: $(TEST_STAMP)
	$(PY) -m pytest -m "not slow and not browser"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "environment: $(VENV)"
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(call install_package,-e .)
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(call install_package,-e ".[$(TEST_EXTRAS)]")
	touch $(TEST_STAMP)

build: $(STAMP)
	$(PY) -m triphase.cli build

clean-book:
	rm -rf _build book/executed

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done
