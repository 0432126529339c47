"""The ``fedbrick-flower`` command: federated fine-tuning of heterogeneous models on Flower.

Commands that do not train (``--help``, ``--version``, ``scenarios``, ``certs``, ``report`` and ``client``
until it starts the SuperNode) import neither torch, transformers nor peft; ``run``, ``launch`` and ``server``
import them for the pre-flight checks of :mod:`fedbrick_flower.preflight`.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from importlib import metadata
from pathlib import Path

from . import runtime
from .deployment import commands as deployment
from .deployment import node
from .run_files import LOGS_DIR, SCENARIO_INPUT_FILE, SUMMARY_FILE, print_summary
from .scenario import Scenario, ScenarioError, builtin_scenarios, parse_overrides, read_yaml_mapping, scenario_path


class HelpFormatter(argparse.HelpFormatter):
    """States every option's default (unless None, False or an empty list) and marks required options."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" not in text and action.option_strings and default not in (None, False, [], argparse.SUPPRESS):
            text += " (default: %(default)s)"
        if action.required and action.option_strings:
            text += " [required]"
        return text


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; building it imports no training library."""
    parser = argparse.ArgumentParser(
        prog="fedbrick-flower", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        parser_class=functools.partial(argparse.ArgumentParser, formatter_class=HelpFormatter),
    )
    _add_run(commands)
    _add_report(commands)
    _add_bench(commands)
    _add_compare(commands)
    _add_scenarios(commands)
    _add_fields(commands)
    deployment.add_certs(commands)
    deployment.add_server(commands)
    deployment.add_client(commands)
    deployment.add_launch(commands)
    node.add_executor(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runtime.stop_on_signals()  # every command that starts processes stops them by PID in `finally` blocks
    try:
        return int(args.handler(args) or 0)
    except (ScenarioError, RuntimeError) as error:
        print(f"fedbrick-flower: error: {error}", file=sys.stderr)
        return 2


def version_line() -> str:
    """``fedbrick-flower X (Flower Y)``, from the installed distributions' metadata."""
    versions = []
    for distribution in ("fedbrick-flower", "flwr"):
        try:
            versions.append(metadata.version(distribution))
        except metadata.PackageNotFoundError:
            versions.append("not installed")
    return f"fedbrick-flower {versions[0]} (Flower {versions[1]})"


# ------------------------------------------------------------------------------------------------ run
def _add_run(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "run",
        help="run a scenario on Flower's Simulation Engine (all clients on this machine)",
        description="Check the scenario (every problem at once), start a local simulation SuperLink, submit the "
        "run with `flwr run`, print the summary. Ctrl-C stops the run and every process it started.",
    )
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
    parser.add_argument(
        "--superlink",
        metavar="HOST:PORT",
        help="submit to this running local simulation SuperLink instead of starting one (`fedbrick-flower bench` "
        "starts one SuperLink and one Ray cluster for all of a suite's cells)",
    )
    parser.add_argument("--superlink-log", type=Path, help="that SuperLink's log, named in errors")
    parser.set_defaults(handler=run_simulation)


def run_simulation(args: argparse.Namespace) -> int:
    """Start a local simulation SuperLink, submit the app with ``flwr run``, print the summary."""
    from .preflight import check_scenario

    overrides = parse_overrides(args.set)
    scenario = check_scenario(args.scenario, overrides, local_clients=True)  # fail fast, before any process starts
    run_dir = (args.out or Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    flwr_home = run_dir / ".flwr-home"
    env = runtime.flower_env(flwr_home)
    http_port = runtime.free_port()
    address = args.superlink or f"127.0.0.1:{http_port}"
    runtime.write_connection(
        flwr_home,
        "fedbrick-sim",
        address,
        num_supernodes=len(scenario.clients),
        num_gpus=simulated_client_gpus(scenario),
    )
    # Overrides are baked into a scenario file: Flower's run_config accepts only keys pyproject declares.
    resolved = run_dir / SCENARIO_INPUT_FILE
    resolved.write_text(_dump(scenario.raw))
    # The ServerApp reads the same file: the fingerprint tells it these checks passed (pre-flight runs once).
    run_config = {"scenario": str(resolved), "out-dir": str(run_dir), "preflight": scenario.fingerprint}
    if args.resume:
        run_config["resume-from"] = str(run_dir)
    if args.audit_wire:
        run_config["audit-wire"] = True
    log_file = args.superlink_log or run_dir / LOGS_DIR / "superlink.log"
    print(f"run directory: {run_dir} (Flower's log: {log_file})", flush=True)
    if args.superlink:  # a SuperLink (and Ray cluster) that outlives this run: submit, do not start or stop one
        runtime.submit_run("fedbrick-sim", run_config, env, run_dir / SUMMARY_FILE, None, log_file)
    else:
        superlink = runtime.start(runtime.simulation_superlink_command(http_port), log_file, env)
        with runtime.running([superlink]):
            runtime.wait_for_http(http_port, superlink, log_file)
            runtime.submit_run("fedbrick-sim", run_config, env, run_dir / SUMMARY_FILE, superlink, log_file)
    print_summary(run_dir)
    return 0


def simulated_client_gpus(scenario: Scenario) -> float:
    """Each simulated client's share of this machine's GPUs (Ray's ``num-gpus``): 0 when none would use one.

    Ray sets ``CUDA_VISIBLE_DEVICES`` to nothing for an actor that requests no GPU, so without a share a
    ``device: auto`` client silently trains on the CPU. The GPUs are split evenly, at most one per client.
    """
    import torch

    from .models.placement import resolve_device

    if not torch.cuda.is_available():
        return 0.0
    wants_gpu = [profile for profile in scenario.clients if resolve_device(profile.device).type == "cuda"]
    if not wants_gpu:
        return 0.0
    return min(1.0, torch.cuda.device_count() / len(scenario.clients))


def _dump(raw: dict) -> str:
    import yaml

    return yaml.safe_dump(raw, sort_keys=False)


# ------------------------------------------------------------------------------------------------ report
def _add_report(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("report", help="print a per-round table and write PNG plots of a run")
    parser.add_argument("run_dir", type=Path)
    parser.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from .report import main as report_main

    return report_main(args)


# ------------------------------------------------------------------------------------------------ bench
def _add_bench(commands: argparse._SubParsersAction) -> None:
    from .leaderboard.protocol import POWERED
    from .leaderboard.suites import SUITES

    parser = commands.add_parser(
        "bench",
        help="run a suite's methods x seeds as ordinary runs (resumable), then compare them",
        description="Each cell (method, seed) is a `fedbrick-flower run` in OUT/METHOD/seed-N; finished cells are "
        "not run again, so rerunning the command resumes the suite. Writes OUT/suite.json and OUT/compare.*. "
        "--powered applies the protocol of docs/results.md: learning rates tuned on a validation split, rounds "
        "until the validation loss plateaus, 5 seeds, paired differences with 95 %% intervals, positive controls.",
    )
    parser.add_argument(
        "suite",
        help="a suite (" + "; ".join(f"{s.name}: {s.description}" for s in SUITES.values()) + "), a powered suite "
        f"({', '.join(POWERED)}; with --powered), a scenario YAML file (with --methods), or `status`: which powered "
        "suites have results under --out (default bench/results)",
    )
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default: 3; --powered: the protocol's 5)")
    parser.add_argument("--seed", type=int, nargs="+", help="these seeds instead of --seeds")
    parser.add_argument("--methods", nargs="+", help="only these methods of the suite (a scenario file: required)")
    parser.add_argument(
        "--out",
        type=Path,
        help="suite directory (default: runs/bench-<suite>; --powered: bench/results/powered-<suite>)",
    )
    parser.add_argument(
        "--powered", action="store_true", help="apply the protocol (tuning, plateau stop, paired statistics)"
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="with --powered: run no cell; write suite.json and compare.* from the cells finished so far",
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="with --powered: copy, instead of running, a cell that repeats a finished run under DIR (same resolved "
        "scenario but for a round cap it never reached, same library versions; made by the same code)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a scenario key for every method"
    )
    parser.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    from .leaderboard.command import main as bench_main

    return bench_main(args)


# ------------------------------------------------------------------------------------------------ compare
def _add_compare(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare", help="side-by-side table and plots of runs (grouped by method, mean ± std over seeds)"
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories or folders of runs")
    parser.add_argument("--out", type=Path, default=Path("comparison"), help="folder of compare.html/.md/.json")
    parser.set_defaults(handler=_compare)


def _compare(args: argparse.Namespace) -> int:
    from .leaderboard.compare import main as compare_main

    return compare_main(args)


# ------------------------------------------------------------------------------------------------ scenarios
def _add_scenarios(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "scenarios", help="list the built-in scenarios: what each shows, clients, rounds, measured duration"
    )
    parser.set_defaults(handler=list_scenarios)


MEASURED_PREFIX = "# Measured:"


def scenario_line(name: str) -> str:
    """One line of ``fedbrick-flower scenarios``, read from the file alone (nothing is imported or loaded)."""
    path = scenario_path(name)
    raw = read_yaml_mapping(path, "scenario")
    clients = raw.get("clients") or []
    models = sorted({str(c.get("model")) for c in clients if isinstance(c, dict)})
    header = [line for line in path.read_text().splitlines() if line.startswith(MEASURED_PREFIX)]
    measured = header[0][len(MEASURED_PREFIX) :].strip() if header else "not measured"
    return (
        f"{name:14s} {raw.get('description', '(no description)')}; {len(clients)} clients ({', '.join(models)}), "
        f"{raw.get('rounds', 3)} rounds; duration: {measured}"
    )


def list_scenarios(args: argparse.Namespace) -> int:
    for name in builtin_scenarios():
        print(scenario_line(name))
    print(
        "\nRun one with: fedbrick-flower run NAME. Durations: measured on a 2-core CPU machine shared with other jobs."
    )
    return 0


# ------------------------------------------------------------------------------------------------ fields
def _add_fields(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "fields", help="print the scenario field reference (every key, type, default, range; algorithm_params)"
    )
    parser.add_argument(
        "--update", type=Path, metavar="FILE", help="rewrite the reference between the markers of FILE (docs/fields.md)"
    )
    parser.set_defaults(handler=_fields)


def _fields(args: argparse.Namespace) -> int:
    from .reference import field_reference, update_reference

    if args.update:
        update_reference(args.update)
        print(f"updated the field reference in {args.update}")
    else:
        print(field_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
