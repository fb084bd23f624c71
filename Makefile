# The project's habits. `make demo` and `make test` do all the set-up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/pytest

.DEFAULT_GOAL := help
.PHONY: help install mosquitto redis-server interop-brokers chromium demo test test-unit test-integration test-mqtt test-interop test-browser screenshots lint typecheck security amqtt-canary coverage bench docs docs-serve clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-17s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# compat: a path entry in site-packages, so that mypy (not only Python) finds the editable Listener
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	@# gmqtt's wheel (in the dev extra for the bench's peer) also installs top-level `tests` and `examples` packages,
	@# which would shadow this repository's (the editable path entry comes after site-packages): removed.
	$(BIN)/python -c "import importlib.metadata as md, shutil; d = md.distribution('gmqtt'); \
		tops = {str(f).split('/')[0] for f in d.files or ()}; \
		[shutil.rmtree(d.locate_file(t)) for t in ('tests', 'examples') if t in tops and d.locate_file(t).is_dir()]"
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install the package with its dev tools

mosquitto:  ## Install the mosquitto broker the tests start (Debian, needs root) when it is missing
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
		echo "mosquitto not found: installing it with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; }

redis-server:  ## Install the redis-server the Redis job store tests start (Debian, needs root) when it is missing
	@command -v redis-server >/dev/null 2>&1 || test -x /usr/bin/redis-server || { \
		echo "redis-server not found: installing it with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

chromium:  ## Install the Chromium the browser tests drive through Playwright (Debian's package, needs root) when it is missing
	@command -v chromium >/dev/null 2>&1 || { \
		echo "chromium not found: installing it with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

interop-brokers: mosquitto  ## Install the brokers of the interop tier when missing: rabbitmq-server, nodejs and npm (Debian, needs root), then aedes (npm ci)
	@{ command -v rabbitmq-server >/dev/null 2>&1 || test -x /usr/sbin/rabbitmq-server; } && \
	{ command -v node >/dev/null 2>&1 || command -v nodejs >/dev/null 2>&1; } && command -v npm >/dev/null 2>&1 || { \
		echo "rabbitmq-server, node or npm not found: installing them with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server \
			$$(command -v node >/dev/null 2>&1 || command -v nodejs >/dev/null 2>&1 || echo nodejs) \
			$$(command -v npm >/dev/null 2>&1 || echo npm) >/dev/null; }
	@# Whether or not Debian starts the rabbitmq-server service it installs, the tests start isolated nodes of their own.
	@test -d tests/support/aedes/node_modules/aedes || (cd tests/support/aedes && npm ci --no-audit --no-fund --loglevel=error)

demo: $(STAMP)  ## Run the demo: embedded broker, a listener, a few jobs (or MQTT_HOST/MQTT_PORT)
	$(BIN)/python scripts/demo.py

test: $(STAMP) mosquitto redis-server interop-brokers chromium  ## Run every test (unit, integration, real-broker, interop, browser, slow) with coverage >= 90%
	LISTENER_INTEROP_REQUIRED=1 $(PYTEST) --cov=Listener --cov-report=term-missing --cov-fail-under=90

test-unit: $(STAMP)  ## Fast unit tests only (no broker)
	$(PYTEST) -m unit

test-integration: $(STAMP) chromium  ## Tests with a mocked MQTT client, and the browser tests needing no broker
	$(PYTEST) -m integration

test-browser: $(STAMP) mosquitto chromium  ## The browser tests (tests/browser): Debian's chromium driven by Playwright
	$(PYTEST) -m browser tests/browser

screenshots: $(STAMP) mosquitto chromium  ## The dashboard's browser tests, saving the screenshots the docs show in docs/images/
	LISTENER_UPDATE_SCREENSHOTS=1 $(PYTEST) -m browser tests/browser/test_dashboard_browser.py

test-mqtt: $(STAMP) mosquitto chromium  ## Tests against real Mosquitto brokers the suite starts (browser ones too)
	$(PYTEST) -m mqtt_integration

test-interop: $(STAMP) interop-brokers  ## The interop tier: Mosquitto, amqtt's broker, Aedes and RabbitMQ, started by the tests
	LISTENER_INTEROP_REQUIRED=1 $(PYTEST) -m interop tests/interop

lint: $(STAMP)  ## flake8 and mypy --strict
	$(BIN)/flake8 Listener tests scripts examples
	$(BIN)/mypy --strict Listener

typecheck: lint

security: $(STAMP)  ## bandit over the library, then pip-audit of .venv (reported as skipped when offline)
	$(BIN)/bandit -q -r Listener
	@if ! $(BIN)/python -c "import pip_audit" >/dev/null 2>&1 && ! $(BIN)/python -m pip install --quiet pip-audit; then \
		echo "dependency audit skipped: pip-audit is not installed and could not be installed"; \
	else \
		$(BIN)/python scripts/audit.py; \
	fi

amqtt-canary:  ## The amqtt contract test and the broker-free tests against amqtt's newest release, in a scratch venv
	$(PYTHON) scripts/amqtt_canary.py $(CANARY_ARGS)

coverage: $(STAMP) mosquitto redis-server interop-brokers chromium  ## Coverage report (terminal + htmlcov/), failing under 90%
	LISTENER_INTEROP_REQUIRED=1 $(PYTEST) --cov=Listener --cov-report=term-missing --cov-report=html --cov-fail-under=90

bench: $(STAMP) mosquitto  ## Benchmark through a real mosquitto: one JSON line per scenario (BENCH_ARGS="--repeat 3")
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

docs: $(STAMP)  ## Build the documentation site into site/ with --strict: a broken link, a page missing from the nav or a bad docstring fails
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(STAMP)  ## Preview the documentation site on http://127.0.0.1:8000, rebuilt as the docs change
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

clean:  ## Remove caches and build output (keeps .venv)
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .hypothesis htmlcov .coverage .coverage.* coverage.xml
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
