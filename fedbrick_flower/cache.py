"""The package's caches: the cache folder and the in-process memos of functions that read files.

The cache folder holds converted packaged models and memoized data splits (derived files, never state).
Everything written there is a pure function of its inputs (a model package, a scenario's split settings), so a
deleted cache only costs the time to rebuild it. Set ``FEDBRICK_CACHE`` to move it.

:func:`file_memo` memoizes a function that reads files on its arguments and on the size and mtime of those files.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

CACHE_ENV = "FEDBRICK_CACHE"


def default_cache_dir() -> Path:
    """Return ``$FEDBRICK_CACHE`` if set, else ``~/.cache/fedbrick-flower``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "fedbrick-flower"


FileStamp = tuple[str, int, int]
F = TypeVar("F", bound=Callable[..., Any])


def file_stamps(paths: Iterable[str | os.PathLike[str] | None]) -> tuple[FileStamp, ...]:
    """``(absolute path, size, mtime_ns)`` of every local file ``paths`` name.

    A folder (a model or a saved dataset) stands for every file under it; a name that is no local path (a
    packaged model or dataset, a hub id) and ``None`` stand for nothing.
    """
    stamps: list[FileStamp] = []
    for path in paths:
        if path is None:
            continue
        local = Path(path).expanduser().absolute()
        if local.is_dir():
            files = sorted(file for file in local.rglob("*") if file.is_file())
        elif local.is_file():
            files = [local]
        else:
            continue
        for file in files:
            stat = file.stat()
            stamps.append((str(file), stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


def file_memo(maxsize: int, files: Callable[..., Iterable[str | os.PathLike[str] | None]]) -> Callable[[F], F]:
    """``functools.lru_cache`` for a function that reads files: the key holds their sizes and mtimes too.

    ``files`` maps the call's arguments to the paths it reads (see :func:`file_stamps`). A process that lives on
    between messages (the warm executor) then reads an edited file again instead of serving it stale.
    """

    def decorate(function: F) -> F:
        @functools.lru_cache(maxsize=maxsize)
        def cached(stamps: tuple[FileStamp, ...], *args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

        @functools.wraps(function)
        def memo(*args: Any, **kwargs: Any) -> Any:
            return cached(file_stamps(files(*args, **kwargs)), *args, **kwargs)

        memo.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        return memo  # type: ignore[return-value]

    return decorate
