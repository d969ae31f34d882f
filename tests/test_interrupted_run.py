"""A run killed in the middle of quantization loses nothing, and the next run finishes from the cache."""

import contextlib
import datetime
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from core.locking import locked_folders
from core.storage import REPO_ROOT, cache_root
from tests.helpers import gone, run, sdk_config, task_states, wait_until, write_config

pytestmark = pytest.mark.slow  # whole flow runs on the trained sample


def quantize_work_dirs() -> set:
    folder = cache_root() / "work" / "quantize"
    return set(folder.iterdir()) if folder.exists() else set()


def start_and_kill_during_quantization(config_path) -> None:
    before = quantize_work_dirs()
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.quantize_evaluate", str(config_path), "--no-progress"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not quantize_work_dirs() - before:  # the quantize step has started
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the quantize step never started"
            time.sleep(0.05)
        time.sleep(1.0)  # well inside MCT: loading the model and calibrating take longer
        assert process.poll() is None, "the run finished before it could be killed"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()  # reaps it and closes its pipe
    assert process.returncode == -signal.SIGKILL


def test_a_kill_during_quantization_keeps_the_previous_outputs_and_a_rerun_completes(
    prefect_harness, sample_dir, tmp_path
):
    # An iteration count of its own makes this run's calibration and quantization new to the cache.
    config_path = write_config(tmp_path / "configuration.json", sdk_config(sample_dir, tmp_path, iteration_count=29))
    previous = {
        tmp_path / "models" / "model_quantized.tflite": b"previous good model",
        tmp_path / "results" / "results.json": b'{"previous": true}',
    }
    for path, content in previous.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)

    start_and_kill_during_quantization(config_path)

    for path, content in previous.items():
        assert path.read_bytes() == content, f"{path} was changed by the killed run"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model_quantized.tflite"]
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["results.json"]

    rerun = run(config_path)
    assert rerun.is_completed(), rerun.message
    states = task_states(rerun)
    assert states["load-calibration-set"] == "Cached", states  # finished before the kill, so reused
    assert states["quantize-with-mct-ptq"] == "Completed", states  # interrupted, so done again
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["top_1_accuracy_tflite_quantized"] > 0.8
    assert (tmp_path / "models" / "model_quantized.tflite").read_bytes() != previous[
        tmp_path / "models" / "model_quantized.tflite"
    ]
    assert not list((tmp_path / "models").glob("*.tmp*")) and not list((tmp_path / "results").glob("*.tmp*"))


def test_a_deleted_work_folder_makes_the_next_run_recompute_instead_of_failing(prefect_harness, sample_dir, tmp_path):
    import shutil

    config_path = write_config(tmp_path / "configuration.json", sdk_config(sample_dir, tmp_path))
    assert run(config_path).is_completed()
    shutil.rmtree(cache_root() / "work")  # the records in prefect-results are kept
    rerun = run(config_path)
    assert rerun.is_completed(), rerun.message
    states = task_states(rerun)
    assert states["load-calibration-set"] == "Completed" and states["quantize-with-mct-ptq"] == "Completed", states
    assert json.loads((tmp_path / "results" / "results.json").read_text())["top_1_accuracy_tflite_quantized"] > 0.8


@contextlib.contextmanager
def sigint_as_at_a_terminal() -> Iterator[None]:
    """Commands started meanwhile get SIGINT as a terminal's foreground command does. A command started in the
    background of a shell without job control (as a test run may be: `make test &`, some CI runners) inherits
    SIGINT ignored, and Python then never raises KeyboardInterrupt: Ctrl-C cannot reach it. An ignored signal
    stays ignored across exec; a handled one is reset to its default, which Python turns into KeyboardInterrupt."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_ends_the_command_with_status_130_and_one_line_and_publishes_nothing(sample_dir, tmp_path):
    config_path = write_config(tmp_path / "configuration.json", sdk_config(sample_dir, tmp_path))
    outputs = [tmp_path / "models", tmp_path / "results"]
    # The test holds the output folders' locks: the run waits for them, a point the test knows, and is
    # interrupted there, however fast or slow the machine is.
    with locked_folders(outputs), sigint_as_at_a_terminal():
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.quantize_evaluate", str(config_path), "--no-progress"],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        said = []
        deadline = threading.Timer(600, process.kill)  # a run that hangs before it waits ends the reading
        deadline.start()
        for line in process.stderr:
            said.append(line)
            if "is in use by another run: waiting" in line:
                break
        else:
            pytest.fail(f"the run never waited for its output folders: {''.join(said)[-3000:]}")
        deadline.cancel()
        started = psutil.Process(process.pid).children(recursive=True)  # the API server, the watchdog, workers
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=240)
    stderr = "".join(said) + rest
    assert process.returncode == 130, stderr[-3000:]
    # Exactly one line after the signal, and the last: whatever Prefect's threads print as they stop (the crash
    # report, a task runner's traceback) goes to the run's log, not after it.
    outcome = "interrupted: the steps that finished are cached; run the same command again to resume"
    assert rest.strip().splitlines() == [outcome], stderr[-3000:]
    assert [p.name for folder in outputs for p in folder.iterdir()] == []  # nothing published, no lock left
    # The watchdog stops what the command left (a zombie whose parent has gone counts as ended).
    wait_until(lambda: all(gone(child.pid) for child in started), 60, f"left running: {started}")


LOG_STAMP = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) \| ")  # Prefect's console format: "21:37:36.952 | INFO | ..."


def _stamped_before(line: str, moment: datetime.time) -> bool:
    stamp = LOG_STAMP.match(line)
    return stamp is not None and datetime.time.fromisoformat(stamp.group(1)) < moment


PROGRESS_BAR = re.compile(r"\d+%\|")  # tqdm's, redrawn after a carriage return
TERMINAL_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # tqdm's cursor moves between stacked bars


def test_sigterm_during_mcts_calibration_ends_the_command_at_once_with_status_143_one_line_and_nothing_published(
    sample_dir, tmp_path
):
    # An iteration count of its own: this run's calibration is new to the cache, and long (211 batches).
    config_path = write_config(tmp_path / "configuration.json", sdk_config(sample_dir, tmp_path, iteration_count=211))
    outputs = [tmp_path / "models", tmp_path / "results"]
    # With its progress bars: MCT's, "MCT calibration", appears as MCT starts reading the calibration batches.
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.quantize_evaluate", str(config_path)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stderr is not None
    try:
        before = b""
        deadline = time.monotonic() + 600
        while b"MCT calibration" not in before:
            assert time.monotonic() < deadline, f"MCT's calibration never started: {before.decode()[-3000:]}"
            if select.select([process.stderr], [], [], 1.0)[0]:
                chunk = os.read(process.stderr.fileno(), 1 << 16)
                assert chunk, f"the command ended before MCT's calibration: {before.decode()[-3000:]}"
                before += chunk
        started = psutil.Process(process.pid).children(recursive=True)  # the API server, the watchdog, workers
        sent = datetime.datetime.now().time()  # Prefect stamps its log lines with the local time of day
        process.send_signal(signal.SIGTERM)  # as `kill PID`, a scheduler or a container's stop sends it
        _, rest = process.communicate(timeout=120)  # MCT and the steps after it would take minutes
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    after = rest.decode(errors="replace")
    stderr = before.decode(errors="replace") + after
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    outcome = "terminated: the steps that finished are cached; run the same command again to resume"
    assert stderr.strip().splitlines()[-1] == outcome, stderr[-3000:]
    # After the signal: that one line, beside the last redraws of the progress bars under way as it came.
    # A step's log line written before the signal may be read after it, on a busy machine: its stamp says which.
    said = [TERMINAL_CONTROL.sub("", line).strip() for line in after.splitlines()]
    said = [line for line in said if not _stamped_before(line, sent)]
    assert [line for line in said if line and not PROGRESS_BAR.search(line)] == [outcome], after[-3000:]
    assert "Traceback" not in after
    assert [p.name for folder in outputs if folder.exists() for p in folder.iterdir()] == []  # nothing published
    # The watchdog stops what the command left (a zombie whose parent has gone counts as ended).
    wait_until(lambda: all(gone(child.pid) for child in started), 60, f"left running: {started}")
