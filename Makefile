# One-command set-up: `make demo` and `make test` create .venv, install the pinned dependencies
# once (a stamp keyed on the dependency spec), then run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SPEC_HASH := $(shell cat pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(SPEC_HASH)
PYTEST_ARGS ?=

.PHONY: setup demo test lint clean test-offline demo-offline browser

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	$(BIN)/mm demo

# tests/evals/test_gallery_browser.py plays the sampling gallery in headless Chromium; under `make test`
# (MM_REQUIRE_BROWSER=1) it fails rather than skips without it. CI runs as root on Debian.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ command -v apt-get >/dev/null 2>&1 && echo "installing chromium (apt-get) for the browser test" && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; }; } || \
	echo "chromium is missing and apt-get could not install it: the browser test will fail (install chromium)"

test: $(STAMP) browser
	MM_REQUIRE_BROWSER=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# A GPU machine without a package registry: no .venv; that machine's own python3 (with torch 2.11, CUDA)
# plus the packages it lacks, installed from a folder of wheels into OFFLINE_SITE. README: "GPU machines".
WHEELS ?= .whl
OFFLINE_PYTHON ?= python3
OFFLINE_SITE ?= /tmp/mm-offline-site
JOBS ?= 8
OFFLINE_ENV = PYTHONPATH=$(CURDIR):$(OFFLINE_SITE)

$(OFFLINE_SITE)/.installed: $(wildcard $(WHEELS)/*.whl)
	@ls $(WHEELS)/*.whl >/dev/null 2>&1 || { echo "no wheels in $(WHEELS)/: see README, GPU machines"; exit 2; }
	$(OFFLINE_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
		--target $(OFFLINE_SITE) $(WHEELS)/*.whl
	@touch $@

test-offline: $(OFFLINE_SITE)/.installed
	$(OFFLINE_ENV) $(OFFLINE_PYTHON) -m pytest -n $(JOBS) $(PYTEST_ARGS)

demo-offline: $(OFFLINE_SITE)/.installed
	$(OFFLINE_ENV) $(OFFLINE_PYTHON) -m tools.cli demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
