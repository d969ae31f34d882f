"""A command starts quickly: Prefect's ephemeral API starts before the command's imports, unless a Prefect
setting may name a server, and the command ends without the interpreter's teardown."""

import logging
import os
import re
import socket
import subprocess
import sys
import textwrap

import psutil
import pytest

from core import startup
from core.errors import InputError
from core.startup import _prefect_settings_given
from core.storage import REPO_ROOT
from tests.helpers import command_environment, sdk_config, write_config


@pytest.fixture
def no_settings(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("PREFECT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_without_any_prefect_setting_the_server_may_start_before_prefect_is_imported(no_settings):
    assert not _prefect_settings_given()


@pytest.mark.parametrize(
    "variable", ["PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_PROFILES_PATH"]
)
def test_a_setting_in_the_environment_that_may_name_a_server_waits_for_prefects_own_reading(
    no_settings, monkeypatch, variable
):
    monkeypatch.setenv(variable, "x")
    assert _prefect_settings_given()


@pytest.mark.parametrize(
    ("file", "text"),
    [
        ("home/profiles.toml", 'active = "remote"\n[profiles.remote]\nPREFECT_API_URL = "http://server:4200/api"\n'),
        ("prefect.toml", '[api]\nurl = "http://server:4200/api"\n'),
        (".env", "PREFECT_API_URL=http://server:4200/api\n"),
        ("pyproject.toml", '[tool.prefect.api]\nurl = "http://server:4200/api"\n'),
    ],
)
def test_a_settings_file_that_may_name_a_server_waits_for_prefects_own_reading(no_settings, file, text):
    (no_settings / file).parent.mkdir(parents=True, exist_ok=True)
    (no_settings / file).write_text(text)
    assert _prefect_settings_given()


@pytest.mark.slow
def test_a_command_runs_a_flow_on_the_api_it_started_and_leaves_no_server_behind(tmp_path):
    environment = command_environment(PREFECT_HOME=str(tmp_path / "home"))
    script = textwrap.dedent(
        """
        from core.startup import begin_command, end_command, start_prefect_api_while_importing
        begin_command()
        import os
        from prefect import flow
        start_prefect_api_while_importing()
        @flow
        def hello():
            return os.environ["PREFECT_API_URL"]
        print(hello(), os.environ["PREFECT_UI_URL"] == "", flush=True)
        end_command(7)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 7, done.stderr[-2000:]
    api_url, no_ui = done.stdout.split()
    assert api_url.startswith("http://127.0.0.1:") and no_ui == "True"
    port = int(api_url.split(":")[2].split("/")[0])
    with pytest.raises(ConnectionRefusedError):  # the server has stopped
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_tensorflows_import_noise_is_dropped_from_native_stderr_and_everything_else_kept(capfd):
    from core.startup import TENSORFLOW_IMPORT_NOISE, native_stderr_without

    with native_stderr_without(TENSORFLOW_IMPORT_NOISE):
        os.write(2, b"E cuda_dnn.cc:9261] Unable to register cuDNN factory: Attempting to register factory\n")
        os.write(2, b"a real problem, written by native code\n")
        os.write(2, b"E cuda_blas.cc:1515] Unable to register cuBLAS factory: Attempting to register factory\n")
    err = capfd.readouterr().err
    assert err == "a real problem, written by native code\n"


@pytest.mark.slow
def test_a_conversion_workers_native_output_goes_to_its_log_not_to_the_command(tmp_path):
    script = textwrap.dedent(
        """
        import subprocess
        from core.build.convert_to_tflite import CONVERSION_WORKERS
        # A program the worker starts writes to the worker's own standard error, as the converter's code does.
        CONVERSION_WORKERS.run(subprocess.run, args=["sh", "-c", "echo said in the worker >&2"], check=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env={**os.environ, "QUANTIZE_CACHE_DIR": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "said in the worker" not in done.stderr + done.stdout
    logs = list((tmp_path / "cache" / "work" / "logs").glob("conversion-worker-*.log"))
    assert any("said in the worker" in log.read_text() for log in logs), logs


def run_command(config_path, environment: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.quantize_evaluate", str(config_path), "--no-progress"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_a_prefect_home_whose_folders_do_not_exist_yet_is_made_and_the_command_prints_its_outcome_once(
    sample_dir, tmp_path
):
    # A fresh clone's `make demo`: PREFECT_HOME is .cache/prefect-home, and .cache/ does not exist yet.
    home = tmp_path / "fresh-clone" / ".cache" / "prefect-home"
    config_path = write_config(tmp_path / "configuration.json", sdk_config(sample_dir, tmp_path))
    environment = command_environment(PREFECT_HOME=str(home))
    done = run_command(config_path, environment)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (home / "prefect.db").is_file()
    terminal = done.stdout + done.stderr
    assert terminal.count("Recommended:") == 1, terminal[-5000:]
    assert len(re.findall(r"^\s*model\s+file\s+size_kib", terminal, re.M)) == 1, terminal[-5000:]
    assert done.stdout.rstrip().splitlines()[-1].startswith("Recommended:")
    assert "Failed to create the Prefect home directory" not in done.stderr


@pytest.mark.parametrize(
    ("home", "why"), [("a-file", "it is a file, not a folder"), ("a-file/home", "a path above it is a file")]
)
def test_a_prefect_home_that_cannot_be_a_folder_is_an_input_error_naming_the_setting(tmp_path, home, why):
    (tmp_path / "a-file").write_text("not a folder")
    environment = command_environment(PREFECT_HOME=str(tmp_path / home))
    done = run_command(tmp_path / "configuration.json", environment, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: PREFECT_HOME={tmp_path / home} cannot be Prefect's home folder"), last
    assert why in last and "set PREFECT_HOME to a folder" in last
    assert "Traceback" not in done.stderr
    assert (tmp_path / "a-file").read_text() == "not a folder"  # nothing of the user's is touched


@pytest.mark.slow
def test_a_server_that_dies_while_starting_fails_the_command_at_once_with_the_servers_own_error(tmp_path):
    environment = command_environment(PREFECT_HOME=str(tmp_path / "home"))
    # A database the server cannot open: it exits during its start.
    environment["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{tmp_path}/missing/folder/prefect.db"
    script = textwrap.dedent(
        """
        from core.startup import begin_command, start_prefect_api_while_importing
        begin_command()
        try:
            start_prefect_api_while_importing()
        except RuntimeError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout.strip()
    assert said.startswith("Prefect's ephemeral API server exited with status 3 while starting"), said
    assert "unable to open database file" in said  # the server's own error, not a timeout


@pytest.mark.slow
def test_a_port_taken_before_the_server_binds_it_starts_the_server_again_on_another(tmp_path):
    script = textwrap.dedent(
        """
        import os, socket
        from pathlib import Path
        from core import startup
        startup.prepare_prefect_home(Path(os.environ["PREFECT_HOME"]))
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        chosen = [taken.getsockname()[1]]  # the first port chosen is taken by the time the server binds it
        free_port = startup.free_port
        startup.free_port = lambda: chosen.pop() if chosen else free_port()
        api = startup.EphemeralAPI.start()
        first = api.port
        api.wait_until_ready(timeout_s=20)
        print(first, api.port, flush=True)
        api.stop()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=command_environment(PREFECT_HOME=str(tmp_path / "home")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    first, answered = map(int, done.stdout.split())
    assert answered != first


def test_the_wait_for_the_server_is_bounded_by_its_progress_and_names_the_setting(monkeypatch):
    """A server that does nothing (here: one that sleeps) is given up after the timeout on the clock, with the
    setting named; one that works is waited for (the sample's servers, in every other test)."""
    from core import startup

    class Sleeper(startup.EphemeralAPI):
        def _launch(self) -> None:
            self.port = startup.free_port()
            self.process = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(60)"], stderr=subprocess.PIPE
            )
            self.said = startup.collections.deque(maxlen=200)
            self.relay = startup.threading.Thread(
                target=self._relay_stderr, args=(self.process, self.said), daemon=True
            )
            self.relay.start()

    api = Sleeper()
    with pytest.raises(RuntimeError) as raised:
        api.wait_until_ready(timeout_s=2)
    assert "did nothing for" in str(raised.value)
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=2" in str(raised.value)
    assert api.process.poll() is not None  # stopped, not left behind


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["idle", "busy"])
def test_a_command_ends_at_once_whatever_its_conversion_workers_are_doing(tmp_path, workers):
    # Python's multiprocessing waits at exit for every worker process, after closing the queue that would tell them
    # to stop: a command whose last conversion ran less than the workers' idle time ago never ended.
    script = textwrap.dedent(
        f"""
        import functools, os, sys, threading, time
        from core.startup import end_command
        from core.build.convert_to_tflite import CONVERSION_WORKERS
        CONVERSION_WORKERS.run(os.getpid)
        if {workers == "busy"!r}:
            sleeping = functools.partial(time.sleep, 600)
            threading.Thread(target=CONVERSION_WORKERS.run, args=(sleeping,), daemon=True).start()
            while CONVERSION_WORKERS.busy == 0:  # the worker has its job
                time.sleep(0.01)
        print("outcome", flush=True)
        sys.stdin.readline()
        end_command(0)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env={**os.environ, "QUANTIZE_CACHE_DIR": str(tmp_path / "cache")},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline() == "outcome\n"
        children = psutil.Process(process.pid).children(recursive=True)
        assert any("multiprocessing" in " ".join(child.cmdline()) for child in children), children
        process.stdin.write("\n")
        process.stdin.flush()
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
    # Python's own resource tracker (a helper of 'spawn') ends by itself once the command has: wait for that.
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [child.cmdline() for child in alive]


def _raises(exc: BaseException):
    def body() -> int:
        raise exc

    return body


@pytest.mark.parametrize(
    ("body", "status", "said"),
    [
        (lambda: 0, 0, ""),
        (lambda: 1, 1, ""),  # the batch's "a configuration failed"
        (_raises(InputError("key 'batch_size' must be positive")), 2, "error: key 'batch_size' must be positive"),
        (_raises(RuntimeError("the server went away")), 1, "error: RuntimeError: the server went away"),
        (_raises(KeyboardInterrupt()), 130, "interrupted: the steps that finished are cached"),
    ],
    ids=["success", "its own status", "input error", "failure", "ctrl-c"],
)
def test_both_commands_end_with_one_status_policy_and_one_line_for_a_failure(body, status, said, capsys):
    loggers = [logging.getLogger(name) for name in ("prefect", "EventsWorker", "APILogWorker")]
    levels = [logger.level for logger in loggers]
    try:
        assert startup.run_command(body) == status
    finally:  # the command quietens Prefect's loggers once its outcome is out: not for the tests that follow
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    err = capsys.readouterr().err
    assert err.startswith(said) and err.count("\n") == (1 if said else 0), err
