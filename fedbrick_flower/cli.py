"""The ``fedbrick-flower`` command."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from . import runtime
from .deployment import commands as deployment
from .run_dir import SUMMARY_FILE
from .scenario import ScenarioError, builtin_scenarios, load_scenario, parse_overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedbrick-flower", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run(commands)
    _add_report(commands)
    _add_scenarios(commands)
    deployment.add_certs(commands)
    deployment.add_server(commands)
    deployment.add_client(commands)
    deployment.add_launch(commands)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ScenarioError, RuntimeError) as error:
        print(f"fedbrick-flower: error: {error}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------------------------ run
def _add_run(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("run", help="run a scenario on Flower's Simulation Engine")
    parser.add_argument("scenario", help=f"built-in name ({', '.join(builtin_scenarios())}) or a YAML path")
    parser.add_argument("--out", type=Path, help="run directory (default: runs/<scenario>-<time>)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario key, e.g. --set rounds=5 --set train.lr=0.001 (repeatable)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument(
        "--audit-wire", action="store_true", help="describe every message in RUN_DIR/wire-audit.jsonl (no values)"
    )
    parser.set_defaults(handler=run_simulation)


def run_simulation(args: argparse.Namespace) -> int:
    """Start a local simulation SuperLink, submit the app with ``flwr run``, print the summary."""
    overrides = parse_overrides(args.set)
    scenario = load_scenario(args.scenario, overrides)  # fail fast, before any process starts
    run_dir = (args.out or Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    flwr_home = run_dir / ".flwr-home"
    env = runtime.flower_env(flwr_home)
    http_port = runtime.free_port()
    runtime.write_connection(flwr_home, "fedbrick-sim", f"127.0.0.1:{http_port}", num_supernodes=len(scenario.clients))
    log_file = run_dir / "logs" / "superlink.log"
    command = [
        "flower-superlink",
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--control-api-address",
        f"127.0.0.1:{runtime.free_port()}",
        "--host",
        "127.0.0.1",
        "--port",
        str(http_port),
        "--database",
        ":flwr-in-memory:",
    ]
    # Overrides are baked into a scenario file: Flower's run_config accepts only keys pyproject declares.
    resolved = run_dir / "scenario.input.yaml"
    resolved.write_text(yaml.safe_dump(scenario.raw, sort_keys=False))
    run_config = {"scenario": str(resolved), "out-dir": str(run_dir)}
    if args.resume:
        run_config["resume-from"] = str(run_dir)
    if args.audit_wire:
        run_config["audit-wire"] = True
    with runtime.running([runtime.start(command, log_file, env)]) as processes:
        runtime.wait_for_http(http_port, processes[0], log_file)
        code = runtime.flwr_run("fedbrick-sim", run_config, env)
        runtime.wait_for_file(run_dir / SUMMARY_FILE, processes[0], log_file)
    if code != 0:
        raise RuntimeError(f"flwr run exited with code {code}; see {log_file}")
    print_summary(run_dir)
    return 0


def print_summary(run_dir: Path) -> None:
    """Print a run's headline numbers."""
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    print(f"\nrun directory: {run_dir}")
    for key, value in summary.items():
        if key != "clients":
            print(f"  {key:32s} {value}")
    print("  per client:")
    for client_id, values in summary.get("clients", {}).items():
        print(f"    {client_id:16s} " + "  ".join(f"{k}={_short(v)}" for k, v in values.items()))


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------------------ report
def _add_report(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("report", help="print a per-round table and write PNG plots of a run")
    parser.add_argument("run_dir", type=Path)
    parser.set_defaults(handler=lambda args: __import__("fedbrick_flower.report", fromlist=["main"]).main(args))


def _add_scenarios(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("scenarios", help="list the built-in scenarios")
    parser.set_defaults(handler=lambda args: print("\n".join(builtin_scenarios())))


if __name__ == "__main__":
    sys.exit(main())
