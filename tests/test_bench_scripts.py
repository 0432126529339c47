"""Every benchmark script still imports: a package module that moves or a name that is renamed breaks the
benchmarks silently otherwise (nothing else imports them)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda path: path.stem)
def test_benchmark_script_imports(script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the script's folder on the path, as `python bench/SCRIPT.py` has it
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)

    # Execute: its imports and definitions (the run itself stays behind `if __name__ == "__main__"`)
    spec.loader.exec_module(module)

    # Assert
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"
