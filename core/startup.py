"""Starting a command quickly.

Without PREFECT_API_URL, a command runs on an ephemeral Prefect API: a Prefect server in a process of its own,
which takes seconds to start (it imports the whole server and prepares its database). Prefect would start it at
the first flow run, after importing its server module into this process too (about 2 s of this process's time,
for one class); the command instead starts the same server itself, before it imports Prefect (unless a setting may
name a server), on a free loopback port, points this process at it, and imports TensorFlow (what the first step
needs) meanwhile.

The command calls `begin_command` before its own imports (a second and more), so the server starts while they run,
and `end_command` last. Before anything starts, Prefect's home folder is made (Prefect makes only its last folder,
and its server cannot open its database in a folder that does not exist) and a watchdog is set up, so that neither
that server nor any other process the command starts outlives it (`core/watchdog.py`). At a normal exit the server
is stopped as Prefect stops its own.

The wait for the server is bounded by its own work, not by the clock: a busy machine slows it down, and it is waited
for as long as it works (see `EphemeralAPI.wait_until_ready`).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import importlib
import importlib.util
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import psutil

from core.errors import InputError
from core.watchdog import watch_this_process

# The command's exit status when the run finished and recorded its results, but some models failed (a converter or
# an interpreter crashed on them): distinct from success (0), an input error (2) and a failed run (1).
FINISHED_WITH_FAILURES = 3
STARTUP_FAILED = 3  # uvicorn's exit status when its port is taken, or the application fails to start
PORT_TAKEN = re.compile(r"address already in use", re.IGNORECASE)
STARTUP_TIMEOUT_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
WORK_ALLOWANCE = 10  # a server that works this many times the startup timeout without answering is stuck

_api: EphemeralAPI | None = None
_begun = False


class EphemeralAPI:
    """Prefect's server, started as Prefect starts its ephemeral one (the same command and environment).

    What it writes to stderr is read here: kept (its last lines) while it starts, so that a server that dies says
    why in the command's error, and passed on to the command's stderr once it answers."""

    def __init__(self) -> None:
        self.answering = threading.Event()
        self._said_lock = threading.Lock()
        self._launch()

    @classmethod
    def start(cls) -> EphemeralAPI:
        return cls()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _launch(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(_site_packages_of("prefect")),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            # What Prefect's SubprocessASGIServer sets: no UI, services for an ephemeral server.
            env={
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
            },
            stderr=subprocess.PIPE,
            # Ctrl-C at the terminal reaches the command, which stops the server once Prefect has sent it what it
            # holds; a server in the terminal's process group would die first. The watchdog covers a killed command.
            start_new_session=True,
        )
        self.said: collections.deque[str] = collections.deque(maxlen=200)
        self.relay = threading.Thread(
            target=self._relay_stderr, args=(self.process, self.said), name="ephemeral-api-stderr", daemon=True
        )
        self.relay.start()

    def _relay_stderr(self, process: subprocess.Popen[bytes], said: collections.deque[str]) -> None:
        assert process.stderr is not None
        for raw in iter(process.stderr.readline, b""):
            line = raw.decode(errors="replace")
            with self._said_lock:
                if self.answering.is_set():
                    sys.stderr.write(line)
                    sys.stderr.flush()
                else:
                    said.append(line)

    def wait_until_ready(self, timeout_s: float) -> None:
        """Return once the server answers. A busy machine slows its start (a new database alone takes it 15 s of
        processor time here), so the clock does not bound the wait, the server's progress does: it fails when the
        server has done no work for `timeout_s`, or has worked `WORK_ALLOWANCE` times as long without answering;
        and at once, with the server's own error, when the server has died."""
        last_cpu, last_progress = 0.0, time.monotonic()
        while True:
            status = self.process.poll()
            if status is not None:
                self._stopped_while_starting(status)
                # Its port was taken between choosing it and binding it: it was started again elsewhere.
                last_cpu, last_progress = 0.0, time.monotonic()
                continue
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                    if response.status == 200:
                        with self._said_lock:
                            self.answering.set()
                            for line in self.said:  # what it said while starting (a warning) is not lost
                                sys.stderr.write(line)
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            cpu = self._cpu_seconds()
            if cpu > last_cpu:
                last_cpu, last_progress = cpu, time.monotonic()
            stalled = time.monotonic() - last_progress
            if cpu > WORK_ALLOWANCE * timeout_s or stalled > timeout_s:
                self.stop()
                what = f"did nothing for {stalled:.0f} s" if stalled > timeout_s else f"worked {cpu:.0f} s"
                raise RuntimeError(
                    f"Prefect's ephemeral API server {what} without answering (the bound is {STARTUP_TIMEOUT_SETTING}"
                    f"={timeout_s:g}: raise it, or start a server with `make server` and set PREFECT_API_URL)"
                    + self._cause()
                )
            time.sleep(0.05)

    def _stopped_while_starting(self, status: int) -> None:
        """Start again on another port when the server's was taken; else fail with the server's own error."""
        self.relay.join(timeout=5)  # what it wrote, read to the end
        if status == STARTUP_FAILED and any(PORT_TAKEN.search(line) for line in self.said):
            self._launch()
            point_prefect_at(self.url)
            return
        raise RuntimeError(f"Prefect's ephemeral API server exited with status {status} while starting" + self._cause())

    def _cause(self) -> str:
        """The last error the server wrote (an exception's last line), if any."""
        with self._said_lock:
            said = list(self.said)
        errors = [line.strip() for line in said if re.match(r"^[\w.]+(Error|Exception)\b.*:", line)]
        return f": {errors[-1]}" if errors else ""

    def _cpu_seconds(self) -> float:
        try:
            times = psutil.Process(self.process.pid).cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    def stop(self) -> None:
        """Stop the server once Prefect has sent it what it holds (else logging's own shutdown, later, would wait
        5 s for a server that is gone)."""
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        if self.process.poll() is None:
            for worker in (APILogWorker, EventsWorker):
                worker.drain_all(timeout=5)
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._ended()

    def kill(self) -> None:
        """Stop the server at once: nothing was sent to it yet."""
        self.process.kill()
        self._ended()

    def _ended(self) -> None:
        self.process.wait()
        self.relay.join(timeout=5)  # it reads to the pipe's end, which the server's end closes
        if self.process.stderr is not None:
            self.process.stderr.close()


def _site_packages_of(package: str) -> Path:
    """The folder `package` is installed in, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{package} is not installed")
    return Path(next(iter(spec.submodule_search_locations))).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def point_prefect_at(api_url: str) -> None:
    """Make this process's Prefect (and any process it starts) use `api_url`."""
    import prefect.context

    os.environ["PREFECT_API_URL"] = api_url
    os.environ.setdefault("PREFECT_UI_URL", "")  # an ephemeral API serves no UI: no links to one
    prefect.context.refresh_global_settings_context()


def start_command() -> None:
    """A command's first act (`begin_command`), before its imports: an input error (an unusable PREFECT_HOME) ends
    the command here, with status 2 and one line naming it."""
    try:
        begin_command()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def begin_command() -> None:
    """Make Prefect's home, set up the watchdog and, when no PREFECT_API_URL is set, start the ephemeral API without
    waiting for it. An unusable PREFECT_HOME is an InputError naming it.

    Reading Prefect's settings means importing Prefect (a second); unless a Prefect setting is visibly given (in
    the environment or a settings file), the server is started before that, and stopped again in the rare case
    the settings then name a server after all."""
    global _api, _begun
    if _begun:
        return
    _begun = True
    try:
        speculate = not _prefect_settings_given()
        if speculate or "PREFECT_HOME" in os.environ:  # where the server will look, known before Prefect is read
            prepare_prefect_home(Path(os.environ.get("PREFECT_HOME") or DEFAULT_PREFECT_HOME).expanduser())
        watch_this_process()
        if speculate:
            _api = EphemeralAPI.start()
        from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_EPHEMERAL_ENABLED

        prepare_prefect_home(PREFECT_HOME.value())
    except InputError:
        if _api is not None:
            _api.kill()
            _api = None
        raise
    wanted = not PREFECT_API_URL.value() and PREFECT_SERVER_EPHEMERAL_ENABLED.value()
    if _api is not None and not wanted:
        _api.stop()
        _api = None
    elif _api is None and wanted:
        _api = EphemeralAPI.start()
    if _api is not None:
        atexit.register(_api.stop)
        point_prefect_at(_api.url)


DEFAULT_PREFECT_HOME = "~/.prefect"  # Prefect's own default (prefect.settings.constants), named without importing it


def prepare_prefect_home(home: Path) -> None:
    """Make Prefect's home folder, parents included, before anything uses it: Prefect itself makes only the last
    folder (and only warns when it cannot), and its server then fails to open its database there."""
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=home):
            pass
    except OSError as exc:
        if isinstance(exc, FileExistsError):
            why = "it is a file, not a folder"
        elif isinstance(exc, NotADirectoryError):
            why = "a path above it is a file, not a folder"
        else:
            why = f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}"
        raise InputError(
            f"PREFECT_HOME={home} cannot be Prefect's home folder ({why}): set PREFECT_HOME to a folder this user "
            "can write (it is created if missing), or unset it to use ~/.prefect"
        ) from exc


def _prefect_settings_given() -> bool:
    """Whether Prefect's API URL, its ephemeral mode or its home may be set anywhere Prefect reads its settings (the
    environment, the profiles, its settings files, which are searched for the words)."""
    if any(("API_URL" in name or "EPHEMERAL" in name) and name.startswith("PREFECT_") for name in os.environ):
        return True
    if "PREFECT_PROFILE" in os.environ or "PREFECT_PROFILES_PATH" in os.environ:
        return True
    home = Path(os.environ.get("PREFECT_HOME") or DEFAULT_PREFECT_HOME).expanduser()
    for file in [home / "profiles.toml", Path("prefect.toml"), Path(".env"), Path("pyproject.toml")]:
        try:
            text = file.read_text(errors="replace").lower()
        except OSError:
            continue
        if "api_url" in text or "ephemeral" in text or ("url" in text and ("[api]" in text or "prefect.api" in text)):
            return True
        home_key = re.search(r"^\s*home\s*=", text, re.M) and (file.name == "prefect.toml" or "[tool.prefect" in text)
        if "prefect_home" in text or home_key:
            return True
    return False


def start_prefect_api_while_importing(*modules: str) -> None:
    """Start the ephemeral API unless `begin_command` has, import `modules` meanwhile, and return when the API
    answers."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    begin_command()
    with native_stderr_without(TENSORFLOW_IMPORT_NOISE):
        for module in modules:
            importlib.import_module(module)
    if _api is not None:
        _api.wait_until_ready(float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))


# TensorFlow 2.15 (the standard package, built with CUDA) registers its CUDA plugins twice at import and says so
# as errors on every machine, with or without a GPU (tensorflow/tensorflow#62075): harmless, and alarming.
TENSORFLOW_IMPORT_NOISE = re.compile(r"Unable to register (cuDNN|cuFFT|cuBLAS) factory")


@contextlib.contextmanager
def native_stderr_without(noise: re.Pattern[str]) -> Iterator[None]:
    """What native code writes to stderr meanwhile, less the lines matching `noise`: the file descriptor itself is
    redirected (a C++ library does not write through sys.stderr). Only for a stretch when no other thread writes."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines(keepends=True):
                if not noise.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def run_command(body: Callable[[], int]) -> int:
    """A command's exit status for `body`: its own, 2 for input the user can fix, 130 for Ctrl-C, 1 for any other
    failure; each failure said in one line on stderr, last (the run's log holds the details)."""
    try:
        return body()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the steps that finished are cached; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        keep_the_outcome_last()


def keep_the_outcome_last() -> None:
    """After the command's outcome is printed, only errors: the ephemeral API logs its shutdown, and Prefect's
    event and log workers (loggers outside "prefect") say how many items they still send while they drain."""
    logging.getLogger("prefect").setLevel(logging.WARNING)
    for service in ("EventsWorker", "APILogWorker"):
        logging.getLogger(service).setLevel(logging.ERROR)


def end_command(status: int) -> NoReturn:
    """Exit with `status` once the output is flushed and the exit handlers have run (the API server stops, the
    logs are flushed), without the interpreter's teardown: with TensorFlow loaded it takes a second or more and
    does nothing for the user. Anything still running in a thread (the idle conversion workers' timer) is daemonic,
    and the watchdog stops any process left."""
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
