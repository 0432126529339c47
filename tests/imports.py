"""Which heavy packages (torch, transformers, peft) a piece of code loads, run in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft")


def heavy_imports_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter (this checkout first on the path) and list the heavy modules loaded."""
    probe = f"import sys\n{code}\nprint('LOADED:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("LOADED:")]
    return [name for name in line.removeprefix("LOADED:").split(",") if name]
