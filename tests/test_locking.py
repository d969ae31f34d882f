"""Two runs never write the same output folder at once; a dead run's lock does not block forever."""

import json
import subprocess
import sys
import threading
import time

import pytest

from core.errors import InputError
from core.locking import LOCK_NAME, locked_folders


def test_the_lock_is_held_during_the_block_and_released_after(tmp_path):
    with locked_folders([tmp_path / "out"]):
        owner = json.loads((tmp_path / "out" / LOCK_NAME).read_text())
        assert owner["pid"] > 0
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_a_second_run_waits_for_the_first(tmp_path):
    order = []

    def first():
        with locked_folders([tmp_path]):
            order.append("first in")
            time.sleep(0.5)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(0.1)
    with locked_folders([tmp_path], timeout=10, poll=0.05):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]


def test_a_busy_folder_fails_clearly_after_the_timeout(tmp_path):
    with locked_folders([tmp_path]):
        with pytest.raises(
            InputError, match=r"is in use by another run \(process \d+ .*delete .*quantize-evaluate.lock"
        ):
            with locked_folders([tmp_path], timeout=0.2, poll=0.05):
                pass


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    import socket

    (tmp_path / LOCK_NAME).write_text(
        json.dumps({"pid": int(dead), "host": socket.gethostname(), "started": "earlier"})
    )
    with locked_folders([tmp_path], timeout=0.2):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] != int(dead)
