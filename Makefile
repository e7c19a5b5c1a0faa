# The project's commands. `make serve` and `make test` set everything up on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= demo_data
STUDIES ?= $(DEMO)/studies
# The address `make serve` listens on: this machine only. HOST=0.0.0.0 opens it to the network
# (put TLS and authentication in front first: README, Security).
HOST ?= 127.0.0.1
PORT ?= 8000
CONF ?=

# Orthanc (a DICOMweb PACS) and Chromium, for the DICOMweb and OHIF tests: Debian packages (needs root)
SYSTEM_PACKAGES := orthanc orthanc-dicomweb chromium
# playwright-core (npm) drives that Chromium in the OHIF test; it never downloads a browser
BROWSER_TESTS := tests/browser
# the OHIF 3 viewer served at /viewer/ (npm @ohif/app, its prebuilt dist/ only; see viewer/package.json)
VIEWER := viewer
# oidc-provider (npm), the OpenID Connect provider the authentication tests run
OIDC_TESTS := tests/oidc

# nnU-Net v2, the benchmarks' peer: its own venv, never the server's (benchmarks/README.md)
NNUNET_VENV ?= .venv-nnunet
MINUTES ?= 2

.PHONY: setup system-deps browser-deps oidc-deps viewer-deps demo serve test lint nnunet-venv nnunet-peer

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -r requirements-dev.txt
	$(VENV)/bin/pip install --no-deps --no-build-isolation --config-settings editable_mode=compat -e .
	touch $@

setup: $(VENV)/.installed

system-deps:
	@if [ -x /usr/sbin/Orthanc ] && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] && [ -x /usr/bin/chromium ]; \
	then echo "system packages present: $(SYSTEM_PACKAGES)"; \
	else apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(SYSTEM_PACKAGES); fi

browser-deps: $(BROWSER_TESTS)/node_modules/.installed

$(BROWSER_TESTS)/node_modules/.installed: $(BROWSER_TESTS)/package.json $(BROWSER_TESTS)/package-lock.json
	npm ci --prefix $(BROWSER_TESTS) --no-audit --no-fund
	touch $@

oidc-deps: $(OIDC_TESTS)/node_modules/.installed

$(OIDC_TESTS)/node_modules/.installed: $(OIDC_TESTS)/package.json $(OIDC_TESTS)/package-lock.json
	npm ci --prefix $(OIDC_TESTS) --no-audit --no-fund
	touch $@

viewer-deps: $(VIEWER)/node_modules/.installed

$(VIEWER)/node_modules/.installed: $(VIEWER)/package.json $(VIEWER)/package-lock.json
	npm ci --prefix $(VIEWER) --ignore-scripts --no-audit --no-fund
	touch $@

demo: setup
	$(PY) -m lib.data.demo --out $(DEMO)

serve: demo viewer-deps
	$(PY) -m monailabel.main start_server --app apps/cmfnet --studies $(STUDIES) --host $(HOST) --port $(PORT) \
		--conf models cmfnet $(CONF)

# in a random order (pytest-randomly), whose seed the header prints: `--randomly-seed=N` repeats it
test: setup browser-deps oidc-deps viewer-deps
	$(PY) -m pytest -p randomly

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# the server venv's packages are visible to it (a .pth file; its own come first): pip finds torch, MONAI ...
# at the pinned versions there and installs only what nnU-Net adds, instead of a second multi-GB torch
$(NNUNET_VENV)/.installed: benchmarks/requirements-nnunet.txt $(VENV)/.installed
	python3 -m venv $(NNUNET_VENV)
	$(PY) -c "import site; print(site.getsitepackages()[0])" > \
		"$$($(NNUNET_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/server_venv.pth"
	$(NNUNET_VENV)/bin/pip install -r benchmarks/requirements-nnunet.txt
	touch $@

nnunet-venv: $(NNUNET_VENV)/.installed

nnunet-peer: nnunet-venv
	$(PY) -m benchmarks.accuracy --data real --methods nnunet --minutes $(MINUTES) --merge --nnunet-venv $(NNUNET_VENV)
