"""Nothing a command starts outlives it.

A command starts processes of its own: Prefect's ephemeral API server (about 240 MB), the conversion workers,
Sony's IMX500 converter (Java), Vela. On a normal exit or Ctrl-C each is stopped by its owner; a `kill -9` or the
OOM killer gives the owner no chance, and they would run on, orphaned, for ever. So the command starts this
watchdog: a small process of its own session (terminal signals do not reach it) that holds the read end of a pipe
whose write end only the command holds. The kernel closes that pipe when the command ends, however it ends; the
watchdog then stops every process the command had started, as it last saw them, and exits.

Run as a script (`python core/watchdog.py PID`): it imports only the standard library and psutil.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import psutil

SNAPSHOT_EVERY_S = 0.5
GRACE_S = 5.0  # between SIGTERM and SIGKILL, as Prefect gives its own server

_watchdog: subprocess.Popen[bytes] | None = None


def watch_this_process() -> None:
    """Start the watchdog for this process, once; it lives as long as this process and cleans up after it."""
    global _watchdog
    if _watchdog is not None and _watchdog.poll() is None:
        return
    _watchdog = subprocess.Popen(
        [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid())],
        stdin=subprocess.PIPE,  # the write end stays here, uninherited: closed only when this process ends
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def watchdog_pid() -> int | None:
    return None if _watchdog is None else _watchdog.pid


def _descendants(owner: psutil.Process) -> dict[tuple[int, float], psutil.Process]:
    """Every living process below `owner` but this one, keyed by PID and start time (a PID alone may be reused)."""
    found = {}
    try:
        children = owner.children(recursive=True)
    except psutil.Error:
        return {}
    for child in children:
        try:
            if child.pid != os.getpid():
                found[(child.pid, child.create_time())] = child
        except psutil.Error:
            continue
    return found


def _stop(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(processes, timeout=GRACE_S)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass


def watch(owner_pid: int) -> None:
    """Until stdin ends (the owner has ended), remember the owner's descendants; then stop those still running."""
    try:
        owner = psutil.Process(owner_pid)
    except psutil.Error:
        return
    seen: dict[tuple[int, float], psutil.Process] = {}
    while True:
        readable, _, _ = select.select([sys.stdin], [], [], SNAPSHOT_EVERY_S)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            break  # end of file: the owner is gone
        if not owner.is_running():
            break
        seen.update(_descendants(owner))
        seen = {key: process for key, process in seen.items() if process.is_running()}
    time.sleep(0.2)  # an owner that exits normally has stopped its children already; give the last ones a moment
    _stop([process for process in seen.values() if process.is_running()])


if __name__ == "__main__":
    watch(int(sys.argv[1]))
