"""A command starts quickly: Prefect's ephemeral API starts before the command's imports, unless a Prefect
setting may name a server, and the command ends without the interpreter's teardown."""

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import psutil
import pytest
from prefect.exceptions import TerminationSignal

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


def stand_in_server(*programs: str):
    """An EphemeralAPI whose launches run `programs` (Python, given the port as sys.argv[1]) in turn, the last one
    for every launch after."""
    from core import startup

    class StandIn(startup.EphemeralAPI):
        def _command(self) -> list[str]:
            launches = getattr(self, "launches", 0)
            self.launches = launches + 1
            return [sys.executable, "-c", programs[min(launches, len(programs) - 1)], str(self.port)]

    return StandIn()


SLEEPS = "import time; time.sleep(60)"
# An idle server's timers: 3 ms of work every 0.2 s, 1.5 % of a processor, as an idle Prefect server's.
TICKS = textwrap.dedent(
    """
    import time
    while True:
        started = time.perf_counter()
        while time.perf_counter() - started < 0.003:
            pass
        time.sleep(0.2)
    """
)
WORKS = "while True: pass"
ANSWERS = textwrap.dedent(
    """
    import http.server, sys
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
    """
)
# What uvicorn says when its port was taken; then Prefect's shutdown of its services can hang, the process alive.
PORT_TAKEN_AND_HANGS = (
    "import sys, time\n"
    "print(f\"ERROR | uvicorn.error - [Errno 98] error while attempting to bind on address ('127.0.0.1', "
    '{sys.argv[1]}): address already in use", file=sys.stderr, flush=True)\n'
    "while True:\n    sum(range(2000))\n    time.sleep(0.2)"
)


@pytest.mark.parametrize("server", [SLEEPS, TICKS], ids=["sleeps", "ticks"])
def test_a_server_that_does_next_to_nothing_is_given_up_after_the_timeout_naming_the_setting(server):
    """A server that sleeps, or only ticks (an idle event loop's timers) without answering, is given up once it has
    done next to nothing for the timeout, with the setting named; one that works is waited for (the sample's
    servers, in every other test). The ticking one was waited for until it had used ten times the timeout of
    processor time: hours."""
    api = stand_in_server(server)
    with pytest.raises(RuntimeError) as raised:
        api.wait_until_ready(timeout_s=1)
    assert "Prefect's ephemeral API server did next to nothing for" in str(raised.value)
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=1: raise it" in str(raised.value)
    assert api.process.poll() is not None  # stopped, not left behind


def test_a_server_that_works_without_ever_answering_is_given_up_at_the_deadline_naming_the_setting():
    api = stand_in_server(WORKS)
    with pytest.raises(RuntimeError) as raised:
        api.wait_until_ready(timeout_s=0.3)  # the deadline: ten times that, 3 s after the launch
    message = str(raised.value)
    assert message.startswith("Prefect's ephemeral API server did not answer within 3 s of its launch"), message
    assert "the deadline is 10 times PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=0.3: raise it" in message
    assert api.process.poll() is not None


def test_a_server_whose_port_was_taken_is_started_again_on_another_without_waiting_for_its_end(monkeypatch):
    from core import startup

    monkeypatch.setattr(startup, "point_prefect_at", lambda url: None)  # this process's Prefect is the tests'
    api = stand_in_server(PORT_TAKEN_AND_HANGS, ANSWERS)
    first, hung = api.port, api.process
    try:
        api.wait_until_ready(timeout_s=20)
        assert api.port != first and api.launches == 2
        assert hung.poll() is not None  # killed, not waited for
    finally:
        api.kill()


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
        (_raises(TerminationSignal(signal.SIGTERM)), 143, "terminated: the steps that finished are cached"),
    ],
    ids=["success", "its own status", "input error", "failure", "ctrl-c", "sigterm during a flow"],
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


# A command whose thread prints a traceback every 10 ms, before its outcome and after, whose main thread writes a
# report as it is interrupted, and whose exit handlers (the API server's stop, in a real command) take a moment:
# nothing it writes after its outcome reaches the terminal.
NOISY_COMMAND = textwrap.dedent(
    """
    import atexit, hashlib, pathlib, signal, sys, threading, time, traceback
    from core.startup import end_command, install_command_ending, run_command

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal (a test run may ignore SIGINT)
    install_command_ending()
    if sys.argv[1] == "waits_under_prefects_bridge":
        import prefect.utilities.engine  # as a command's flows import it
    atexit.register(time.sleep, 0.5)  # what the thread prints meanwhile goes to the log
    atexit.register(pathlib.Path(sys.argv[2]).write_text, "the exit handlers ran")

    def noise():
        while True:
            try:
                raise RuntimeError("a late failure in a thread")
            except RuntimeError:
                traceback.print_exc()
            time.sleep(0.01)

    def computes():  # minutes in native code, the GIL released: no Python signal handler runs meanwhile
        hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 2**31 - 1)

    def waits():
        try:
            while True:
                time.sleep(0.1)
        except BaseException:
            print("a crash report, as Prefect writes one", file=sys.stderr, flush=True)
            raise

    def waits_under_prefects_bridge():  # Prefect's own SIGTERM handler, as during a flow run
        from prefect.utilities.engine import capture_sigterm

        with capture_sigterm():
            waits()

    def fails():
        time.sleep(0.3)
        raise RuntimeError("the run failed")

    def ready_once_main_is_in(function):
        while sys._current_frames()[threading.main_thread().ident].f_code.co_name != function:
            time.sleep(0.01)
        time.sleep(0.1)
        sys.stderr.write("ready\\n")  # one write: print's two could take the noise thread's lines between them
        sys.stderr.flush()

    def body():
        threading.Thread(target=noise, daemon=True).start()
        innermost = "waits" if sys.argv[1].startswith("waits") else sys.argv[1]
        threading.Thread(target=ready_once_main_is_in, args=(innermost,), daemon=True).start()
        return globals()[sys.argv[1]]()

    end_command(run_command(body))
    """
)


@pytest.mark.parametrize(
    ("main_thread", "signum", "status", "outcome"),
    [
        ("waits", signal.SIGINT, 130, "interrupted: the steps that finished are cached; run the same command again"),
        ("waits", signal.SIGTERM, 143, "terminated: the steps that finished are cached; run the same command again"),
        (
            "waits_under_prefects_bridge",
            signal.SIGTERM,
            143,
            "terminated: the steps that finished are cached; run the same command again",
        ),
        ("computes", signal.SIGTERM, 143, "terminated: the steps that finished are cached; run the same command again"),
        ("computes", signal.SIGINT, 130, "interrupted: the steps that finished are cached; run the same command again"),
        ("fails", None, 1, "error: RuntimeError: the run failed"),
    ],
    ids=[
        "sigint-while-it-waits",
        "sigterm-while-it-waits",
        "sigterm-under-prefects-handler",
        "sigterm-in-native-code",
        "sigint-in-native-code",
        "failure",
    ],
)
def test_a_commands_outcome_is_its_last_output_and_a_signal_ends_it_whatever_its_threads_do(
    tmp_path, main_thread, signum, status, outcome
):
    marker = tmp_path / "exit-handlers"
    process = subprocess.Popen(
        [sys.executable, "-c", NOISY_COMMAND, main_thread, str(marker)],
        cwd=REPO_ROOT,
        env={**os.environ, "QUANTIZE_CACHE_DIR": str(tmp_path / "cache")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    hang = threading.Timer(120, process.kill)  # a command that never says it is ready ends the reading
    hang.start()
    try:
        before = ""
        for line in iter(process.stderr.readline, ""):  # to the ready line, or to the end (killed, or it failed)
            before += line
            if line == "ready\n":
                break
        hang.cancel()
        assert process.poll() is None, before[-3000:]
        if signum is not None:
            process.send_signal(signum)
        _, said = process.communicate(timeout=120)  # minutes of pbkdf2 otherwise
    finally:
        hang.cancel()
        process.kill()
    assert process.returncode == status, said[-3000:]
    lines = said.strip().splitlines()
    assert lines[-1] == outcome + (" to resume" if signum else ""), said[-3000:]
    assert sum(line.startswith(("interrupted:", "terminated:", "error:")) for line in lines) == 1
    assert "a crash report" not in said  # written as the main thread unwound: after the outcome line
    assert marker.read_text() == "the exit handlers ran"  # the API server's stop, the workers'
    # The thread went on printing after the outcome: into the log, not onto the terminal.
    logs = list((tmp_path / "cache" / "work" / "logs").glob("command-*.log"))
    assert len(logs) == 1 and "a late failure in a thread" in logs[0].read_text()


def test_the_ending_still_finds_where_a_publish_changes_the_output_folders():
    from core.results import publishing

    assert publishing.__file__.endswith(startup.PUBLISHING_MODULE)
    assert all(callable(getattr(publishing, name, None)) for name in startup.PUBLISHING_STEPS)


def test_prefects_own_sigterm_handler_says_the_outcome_before_it_raises(monkeypatch):
    """During a flow run Prefect's SIGTERM handler replaces the command's: wrapped, it says the outcome line first,
    before the main thread writes Prefect's crash report (on a busy machine the command's watching thread may be
    scheduled after that)."""
    from prefect.utilities import engine

    monkeypatch.setattr(engine, "_prefect_sigterm_handler", engine._prefect_sigterm_handler)  # restored after
    ending = startup.CommandEnding()  # not installed: this process's own signal handling is left alone
    monkeypatch.setattr(startup, "_ending", ending)
    heard: list[int] = []
    monkeypatch.setattr(ending, "_heard", lambda number: heard.append(number) or True)
    try:
        ending.adopt_prefects_sigterm_bridge()
        ending.adopt_prefects_sigterm_bridge()  # once: not wrapped twice
        with engine.capture_sigterm():
            installed = signal.getsignal(signal.SIGTERM)
        assert callable(installed)
        with pytest.raises(TerminationSignal):
            installed(signal.SIGTERM, None)
        assert heard == [signal.SIGTERM]
    finally:
        for fd in (ending.terminal, ending._wake_read, ending._wake_write):
            os.close(fd)


def test_a_child_forked_without_exec_is_not_the_command_and_a_signal_to_it_leaves_the_command_alone():
    script = textwrap.dedent(
        """
        import os, signal, time
        from core.startup import install_command_ending
        install_command_ending()
        child = os.fork()  # as a process pool's worker
        if child == 0:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            os._exit(0)
        _, status = os.waitpid(child, 0)
        time.sleep(0.5)  # the command's watching thread, had it been woken, would have ended it by now
        print(os.waitstatus_to_exitcode(status), flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(-signal.SIGTERM)]  # the child died of it, as it would without the command's
    assert done.stderr == ""


def test_the_outcome_line_is_a_line_of_its_own_after_a_progress_bar_left_unfinished():
    script = textwrap.dedent(
        """
        import signal, sys, time, tqdm
        from core.startup import end_command, install_command_ending, run_command
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal (a test run may ignore SIGINT)
        install_command_ending()
        def body():
            bar = tqdm.tqdm(total=10, desc="MCT calibration")  # drawn, its line unfinished till it closes
            print("ready", flush=True)
            while True:
                time.sleep(0.1)
        end_command(run_command(body))
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGINT)
        _, said = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, said
    lines = said.splitlines()
    assert lines[-1] == "interrupted: the steps that finished are cached; run the same command again to resume"
    assert lines[-2].startswith("MCT calibration:   0%")
