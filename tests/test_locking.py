"""Two runs never write the same output folder at once, and no lock outlives the process that held it: not one
killed with SIGKILL, not one that met a full disk.

The lock is the operating system's (flock); these tests hold it from real processes.
"""

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from core.errors import InputError
from core.locking import LOCK_NAME, locked_folders
from core.storage import REPO_ROOT


def python(code: str, **options) -> subprocess.Popen:
    """A Python process of this project, running `code`."""
    environment = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    }
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, env=environment, text=True, **options
    )


def hold_lock_in_another_process(folder) -> subprocess.Popen:
    holder = python(
        f"""
        import time
        from core.locking import locked_folders
        with locked_folders([{str(folder)!r}]):
            print("locked", flush=True)
            time.sleep(600)
        """,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_the_lock_is_held_during_the_block_and_its_file_removed_after(tmp_path):
    with locked_folders([tmp_path / "out"]):
        assert (tmp_path / "out" / LOCK_NAME).exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_a_second_run_waits_for_the_first_and_says_so(tmp_path):
    order = []
    first_holds, second_waits = threading.Event(), threading.Event()

    class Waiting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "is in use by another run: waiting" in record.getMessage():
                second_waits.set()

    def first():
        with locked_folders([tmp_path]):
            order.append("first in")
            first_holds.set()
            second_waits.wait(timeout=60)  # it lets go only once the second has found the folder busy
            order.append("first out")

    logging.getLogger("core.locking").addHandler(handler := Waiting())
    try:
        thread = threading.Thread(target=first)
        thread.start()
        first_holds.wait(timeout=60)
        with locked_folders([tmp_path], timeout=60, poll=0.05):
            order.append("second in")
        thread.join()
    finally:
        logging.getLogger("core.locking").removeHandler(handler)
    assert second_waits.is_set()
    assert order == ["first in", "first out", "second in"]


def test_a_busy_folder_fails_after_the_timeout_naming_the_folder_and_what_to_do(tmp_path):
    holder = hold_lock_in_another_process(tmp_path)
    try:
        with pytest.raises(InputError) as info:
            with locked_folders([tmp_path], timeout=0.3, poll=0.05):
                pass
    finally:
        holder.kill()
        holder.communicate()  # reaps it and closes its pipe
    message = str(info.value)
    assert f"folder {tmp_path} is in use by another run" in message and "waited 0 s" in message
    assert "Wait for that run to finish, or use another folder" in message
    assert "there is nothing to delete" in message


def test_a_run_killed_with_sigkill_while_holding_the_lock_does_not_block_the_next(tmp_path):
    holder = hold_lock_in_another_process(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.communicate()
    assert (tmp_path / LOCK_NAME).exists()  # the killed run could not remove its file
    started = time.monotonic()
    with locked_folders([tmp_path], timeout=5, poll=0.05):
        assert time.monotonic() - started < 1
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("left", [b"", b'{"pid": 1, "host": "elsewhe', b'{"pid": 1, "host": "this", "started": "x"}'])
def test_a_lock_file_left_behind_blocks_nothing_whatever_it_holds(tmp_path, left):
    """An empty or half-written file is what a full disk left with the old process-id lock files."""
    (tmp_path / LOCK_NAME).write_bytes(left)
    with locked_folders([tmp_path], timeout=0.2):
        pass
    assert not (tmp_path / LOCK_NAME).exists()


def test_runs_in_many_processes_never_overlap(tmp_path):
    """The lock file is removed on release: a run that had opened it just before must not also get in."""
    log = tmp_path / "log"
    code = f"""
        import os
        from core.locking import locked_folders
        for _ in range(25):
            with locked_folders([{str(tmp_path / "out")!r}], timeout=60, poll=0.001):
                with open({str(log)!r}, "a") as f:
                    f.write(f"in {{os.getpid()}}\\n")
                    f.flush()
                with open({str(log)!r}, "a") as f:
                    f.write(f"out {{os.getpid()}}\\n")
        """
    runs = [python(code) for _ in range(4)]
    assert [run.wait(timeout=120) for run in runs] == [0] * 4
    lines = log.read_text().split()
    pairs = list(zip(lines[0::4], lines[1::4], lines[2::4], lines[3::4], strict=True))
    assert len(pairs) == 100
    assert all(a == "in" and c == "out" and b == d for a, b, c, d in pairs), lines[:40]


def in_private_mount_namespace(command: str, **options) -> subprocess.CompletedProcess:
    """`command` in a shell of its own mount namespace: what it mounts is seen by it and its children only."""
    return subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", command], capture_output=True, text=True, **options
    )


def skip_unless_private_mounts_work(folder, options: str) -> None:
    if not shutil.which("unshare"):
        pytest.skip("needs unshare(1) to mount a small private file system")
    probe = in_private_mount_namespace(f"mount -t tmpfs -o {options} tmpfs {folder}")
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private file system here: {probe.stderr.strip()[-300:]}")


@pytest.fixture
def small_disk(tmp_path):
    """A folder where a 64 KiB tmpfs can be mounted privately, or a skip where this system allows no such mount."""
    disk = tmp_path / "disk"
    disk.mkdir()
    skip_unless_private_mounts_work(disk, "size=64k")
    return disk


def test_a_full_disk_at_lock_time_leaves_no_lock_that_blocks_later_runs(small_disk, tmp_path):
    """On a real full file system: the run that meets the full disk inside the lock fails, and the next run
    gets the lock at once."""
    out = small_disk / "out"
    first = f"""
        from pathlib import Path
        from core.files import atomic_write_text
        from core.locking import locked_folders
        with locked_folders([Path({str(out)!r})]):
            atomic_write_text(Path({str(out / "results.json")!r}), "x" * 100_000)
        """
    second = f"""
        import time
        from core.locking import locked_folders
        started = time.monotonic()
        with locked_folders([{str(out)!r}], timeout=5, poll=0.05):
            print("second run got the lock after", round(time.monotonic() - started, 1), "s")
        """
    script = tmp_path / "full_disk.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import errno, subprocess, sys
            with open({str(small_disk / "filler")!r}, "wb", buffering=0) as f:  # fill the disk
                try:
                    while True:
                        f.write(b"x" * 4096)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
            run = subprocess.run([sys.executable, "-c", {textwrap.dedent(first)!r}], capture_output=True, text=True)
            print("first run:", run.returncode, run.stderr.strip().splitlines()[-1])
            run = subprocess.run([sys.executable, "-c", {textwrap.dedent(second)!r}], capture_output=True, text=True)
            print(run.stdout, run.stderr)
            """
        )
    )
    environment = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    }
    result = in_private_mount_namespace(
        f"mount -t tmpfs -o size=64k tmpfs {small_disk} && exec {sys.executable} {script}",
        cwd=REPO_ROOT,
        env=environment,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "first run: 1 OSError: [Errno 28] No space left on device" in result.stdout, result.stdout
    assert "second run got the lock after 0.0 s" in result.stdout, result.stdout


def test_a_disk_too_full_to_create_the_lock_file_says_so_and_leaves_nothing_behind(small_disk, tmp_path):
    """No inode left for the lock file: the run fails naming the file and the fix, holding nothing."""
    out = small_disk / "out"
    script = tmp_path / "no_inode_left.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import errno, os
            from pathlib import Path
            from core.locking import locked_folders
            out = Path({str(out)!r})
            out.mkdir()
            fillers = []
            try:
                while True:  # use up every inode
                    fillers.append(out.parent / f"filler{{len(fillers)}}")
                    fillers[-1].touch()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
            try:
                with locked_folders([out], timeout=1):
                    print("held")
            except OSError as exc:
                print("refused:", exc)
            print("left:", os.listdir(out))
            fillers[0].unlink()
            with locked_folders([out], timeout=1):
                print("the next run got the lock")
            """
        )
    )
    environment = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    }
    result = in_private_mount_namespace(
        f"mount -t tmpfs -o size=64k,nr_inodes=8 tmpfs {small_disk} && exec {sys.executable} {script}",
        cwd=REPO_ROOT,
        env=environment,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        f"refused: [Errno 28] cannot create the lock file {out / LOCK_NAME} (No space left on device): "
        "free space on that disk or make the folder writable, then run again" in result.stdout
    ), result.stdout
    assert "left: []" in result.stdout and "the next run got the lock" in result.stdout, result.stdout
