# The two commands of the README. Each sets up everything it needs on a fresh machine (deploy/install.sh).
VENV ?= .venv
export FLWR_TELEMETRY_ENABLED = 0
export FLWR_DISABLE_UPDATE_CHECK = 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION = 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER = 0
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: install run test lint
install:
	bash deploy/install.sh

# The embedded default: pretrained MiniLM-L6 clients at 6/4/3/2 layers on BBC News, on Flower's Simulation Engine.
run: install
	$(VENV)/bin/fedbrick-flower run hetero-depth --out runs/hetero-depth

lint: install
	$(VENV)/bin/ruff check fedbrick_flower tests bench
	$(VENV)/bin/ruff format --check fedbrick_flower tests bench

# Unit tests, then the integration tests (Simulation and Deployment Engines, multi-node), all on this machine.
test: install lint
	FLWR_HOME=$$(mktemp -d) $(VENV)/bin/python -m pytest -q -m "not integration"
	FLWR_HOME=$$(mktemp -d) $(VENV)/bin/python -m pytest -q -m integration --durations=12
