# fedpeer: `make run` starts a node, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ./.fedpeer
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test bench lint typecheck pytest venv system-deps clean

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
test: system-deps $(STAMP) lint typecheck pytest

# Debian packages the multi-host, discovery and Avahi interop tests use (iproute2: network
# namespaces; avahi-daemon, avahi-utils, dbus: tests/peer/test_avahi_interop.py).
# Installed only when root and missing (one `command -v` per package, so a repeated
# `make test` costs nothing); `apt-get update` only when something is missing.
SYSTEM_PACKAGES := iproute2 avahi-daemon avahi-utils dbus
system-deps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  PATH="$$PATH:/usr/sbin:/sbin"; missing=""; \
	  command -v ip >/dev/null || missing="$$missing iproute2"; \
	  command -v avahi-daemon >/dev/null || missing="$$missing avahi-daemon"; \
	  command -v avahi-browse >/dev/null || missing="$$missing avahi-utils"; \
	  command -v dbus-daemon >/dev/null || missing="$$missing dbus"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$missing; \
	  fi; \
	fi

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
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
