"""Process plumbing: stop() ends what we started, including children in sessions of their own."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from fedbrick_flower import runtime

# A parent whose child starts a session of its own and ignores SIGTERM (like a SuperLink's ServerApp).
_PARENT = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'], start_new_session=True)\n"
    "open(sys.argv[1], 'w').write(str(child.pid))\n"
    "time.sleep(300)\n"
)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_stop_ends_the_process_and_its_detached_children(tmp_path: Path) -> None:
    # Prepare
    pid_file = tmp_path / "child.pid"
    parent = runtime.start([sys.executable, "-c", _PARENT, str(pid_file)], tmp_path / "parent.log", os.environ)
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())

    # Execute
    runtime.stop(parent, grace=1.0)

    # Assert
    assert parent.poll() is not None
    assert not _running(child)
