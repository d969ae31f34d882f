"""Nothing a command starts outlives it: not when it is killed with SIGKILL, not Prefect's ephemeral API server."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from core.storage import REPO_ROOT
from tests.helpers import gone, sdk_config, wait_until, write_config


def test_a_killed_process_takes_its_children_and_its_watchdog_with_it(tmp_path):
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import subprocess, sys, time
                from core.watchdog import watch_this_process, watchdog_pid
                watch_this_process()
                child = subprocess.Popen(["sleep", "600"])
                print(watchdog_pid(), child.pid, flush=True)
                time.sleep(600)
                """
            ),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    watchdog, child = (int(pid) for pid in owner.stdout.readline().split())
    time.sleep(1.5)  # the watchdog has seen the child
    assert not gone(child) and not gone(watchdog)

    owner.kill()
    owner.wait()

    wait_until(lambda: gone(child), 10, "the killed process's child still runs")
    wait_until(lambda: gone(watchdog), 10, "the watchdog outlived what it watched")


def test_a_process_that_ends_normally_leaves_no_watchdog_behind():
    owner = subprocess.run(
        [
            sys.executable,
            "-c",
            "from core.watchdog import watch_this_process, watchdog_pid\nwatch_this_process()\nprint(watchdog_pid())",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    watchdog = int(owner.stdout)
    wait_until(lambda: gone(watchdog), 10, "the watchdog outlived a normal exit")


def prefect_server_below(pid: int) -> psutil.Process | None:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            if "prefect.server.api.server:create_app" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


@pytest.mark.slow
def test_the_ephemeral_prefect_api_does_not_outlive_a_command_killed_with_sigkill(sample_dir, tmp_path):
    config_path = write_config(tmp_path / "configuration.json", sdk_config(sample_dir, tmp_path))
    environment = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    command = subprocess.Popen(
        [sys.executable, "-m", "flows.quantize_evaluate", str(config_path), "--no-progress"],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: prefect_server_below(command.pid) is not None, 120, "no ephemeral API server started")
        server = prefect_server_below(command.pid)
        assert server is not None
        time.sleep(1.0)  # the watchdog has seen it
    finally:
        command.send_signal(signal.SIGKILL)  # the command only: the server shares its process group
        command.wait()

    wait_until(lambda: gone(server.pid), 20, f"the ephemeral API server (PID {server.pid}) outlived the command")
