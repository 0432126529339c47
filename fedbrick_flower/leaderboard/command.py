"""The ``fedbrick-flower bench`` command: a suite, a powered suite or a scenario file, dispatched to the plain
runner (:mod:`.runner`) or the powered protocol (:mod:`.powered`)."""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import sys
import time
from pathlib import Path

from .. import runtime
from ..scenario import parse_overrides
from .protocol import PoweredSuite
from .runner import SUITE_FILE, _versions, cell_dir, cell_status, earlier_invocations, machine, run_in_child, run_suite
from .suites import Suite, expand, suite


def resolve_suite(name: str, methods: list[str] | None, powered: bool) -> Suite | PoweredSuite:
    """What ``bench NAME`` runs: a scenario file (a suite of ``methods`` built from it), a powered suite (with
    ``--powered``) or a suite; ``ValueError`` says which names exist."""
    from .protocol import POWERED, powered_suite, suite_from_file, user_powered_suite

    if name.endswith((".yaml", ".yml")) or Path(name).is_file():
        built = suite_from_file(name, methods or [])
        return user_powered_suite(built) if powered else built
    if powered:
        if name in POWERED:
            return powered_suite(name)
        raise ValueError(f"bench --powered: {name!r} is not one of the powered suites {sorted(POWERED)}")
    return suite(name)


def main(args: argparse.Namespace) -> int:
    """``fedbrick-flower bench``: run the suite, then write ``suite.json`` and the comparison."""
    from .compare import write_comparison
    from .powered import main as powered_main
    from .powered import suite_states

    if args.suite == "status":  # every powered suite, run or not
        for name, state in suite_states(args.out or Path("bench") / "results").items():
            print(f"{name:18s} {state}")
        return 0
    try:
        chosen = resolve_suite(args.suite, args.methods, getattr(args, "powered", False))
    except ValueError as error:
        print(f"fedbrick-flower bench: error: {error}", file=sys.stderr)
        return 2
    if not isinstance(chosen, Suite):
        return powered_main(args, chosen)
    for option, needs in (("report", "reads a powered suite's cells"), ("reuse", "reads plateau-stopped runs")):
        if getattr(args, option, None):
            print(f"fedbrick-flower bench: error: --{option} {needs}: add --powered", file=sys.stderr)
            return 2
    seeds = list(range(args.seeds or 3)) if args.seed is None else list(args.seed)
    cells = expand(chosen, seeds, parse_overrides(args.set), args.methods)
    out = (args.out or Path("runs") / f"bench-{chosen.name}").resolve()
    started = time.monotonic()
    load_before = machine()["load_average"]
    out.mkdir(parents=True, exist_ok=True)
    if any(not c.unavailable and cell_status(cell_dir(out, c), c) != "finished" for c in cells):
        # Every cell of the suite joins one simulation SuperLink and one Ray cluster instead of starting its own.
        with runtime.shared_simulation(out, os.cpu_count() or 1) as superlink:
            entries = run_suite(cells, out, functools.partial(run_in_child, superlink=superlink))
    else:
        entries = run_suite(cells, out)
    wall = time.monotonic() - started
    invocation = {
        "command": " ".join(["fedbrick-flower", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_seconds": wall,
        "cells_run": sum(1 for e in entries if e.get("resumed") is False or e["status"].startswith("failed")),
        "machine": {**machine(), "load_average_before": load_before},
    }
    record = {
        "suite": chosen.name,
        "description": chosen.description,
        "scenario": chosen.scenario,
        "command": invocation["command"],
        "seeds": seeds,
        "extra_overrides": parse_overrides(args.set),
        "date": invocation["date"],
        "wall_seconds_this_invocation": wall,
        "wall_seconds_all_cells": sum(e.get("seconds", 0.0) for e in entries),
        "machine": invocation["machine"],
        "invocations": [*earlier_invocations(out / SUITE_FILE), invocation],
        "versions": _versions(entries),
        "cells": entries,
    }
    (out / SUITE_FILE).write_text(json.dumps(record, indent=2))
    runs = [Path(e["run_dir"]) for e in entries if e["status"] == "finished"]
    unavailable = {e["method"]: e["status"] for e in entries if e["status"].startswith("not available")}
    if runs:
        for path in write_comparison(runs, out, title=f"fedbrick-flower bench {chosen.name}", notes=unavailable):
            print(f"wrote {path}")
    print(f"wrote {out / SUITE_FILE}")
    failed = [e for e in entries if e["status"].startswith("failed")]
    return 1 if failed else 0
