# fedpeer: `make run` starts a node, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ./.fedpeer
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test bench lint typecheck pytest venv system-deps js-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

## run: create .venv, install, start a node (SQLite store, identity in ./.fedpeer)
run: $(STAMP)
	$(VENV)/bin/fedpeer --data-dir $(DATA_DIR) run

## test: install what the tests need (Debian packages too when root), lint, type-check, test
test: system-deps js-deps $(STAMP) lint typecheck pytest

# Debian packages the multi-host, discovery and Avahi interop tests use (iproute2: network
# namespaces; avahi-daemon, avahi-utils, dbus: tests/peer/test_avahi_interop.py; curl: the
# independent TLS pin check in tests/peer/test_tls.py).
# Installed only when root and missing (one `command -v` per package, so a repeated
# `make test` costs nothing); `apt-get update` only when something is missing.
SYSTEM_PACKAGES := iproute2 avahi-daemon avahi-utils dbus curl
system-deps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  PATH="$$PATH:/usr/sbin:/sbin"; missing=""; \
	  command -v ip >/dev/null || missing="$$missing iproute2"; \
	  command -v avahi-daemon >/dev/null || missing="$$missing avahi-daemon"; \
	  command -v avahi-browse >/dev/null || missing="$$missing avahi-utils"; \
	  command -v dbus-daemon >/dev/null || missing="$$missing dbus"; \
	  command -v curl >/dev/null || missing="$$missing curl"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$missing; \
	  fi; \
	fi

# The JavaScript checker of the conformance vectors (interop/js, interop/test_js_checker.py)
# needs node >= 20.19 and its npm packages, pinned by interop/js/package-lock.json. When node
# and npm are present, `npm ci` installs them (again only when the lock file changed); without
# them, or when npm cannot reach its registry, the test is skipped and says why. The same
# packages hold the independent CAR reader of exports (interop/js/read_car.mjs, @ipld/car;
# tests/test_archive.py).
JS_DIR := interop/js
js-deps:
	@if command -v node >/dev/null && command -v npm >/dev/null; then \
	  if [ ! -f $(JS_DIR)/node_modules/.installed ] || \
	     [ $(JS_DIR)/package-lock.json -nt $(JS_DIR)/node_modules/.installed ]; then \
	    echo "installing the JavaScript conformance checker's packages (npm ci in $(JS_DIR))"; \
	    if (cd $(JS_DIR) && npm ci --no-audit --no-fund --loglevel=error); then \
	      touch $(JS_DIR)/node_modules/.installed; \
	    else echo "npm ci failed: interop/test_js_checker.py will be skipped"; fi; \
	  fi; \
	else echo "node/npm not found: interop/test_js_checker.py will be skipped"; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests interop bench
	$(VENV)/bin/ruff format --check src tests interop bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict src

pytest: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

## bench: speed and memory benchmarks (prints medians and ratios to the references)
bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache $(JS_DIR)/node_modules
