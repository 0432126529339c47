"""The package's cache folder: converted packaged models and memoized data splits (derived files, never state).

Everything written here is a pure function of its inputs (a model package, a scenario's split settings), so a
deleted cache only costs the time to rebuild it. Set ``FEDBRICK_CACHE`` to move it.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "FEDBRICK_CACHE"


def default_cache_dir() -> Path:
    """Return ``$FEDBRICK_CACHE`` if set, else ``~/.cache/fedbrick-flower``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "fedbrick-flower"
