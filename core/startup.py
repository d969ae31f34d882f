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

The wait for the server follows its own work more than the clock: a busy machine slows it down, and it is waited
for as long as it works, up to a deadline (see `EphemeralAPI.wait_until_ready`).

A command's outcome (its results, or one line saying why it failed or stopped) is the last thing it writes, and
SIGINT (Ctrl-C) and SIGTERM end it within seconds, whatever its threads and native libraries are doing
(`CommandEnding`).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import http.client
import importlib
import importlib.util
import logging
import os
import re
import signal
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
from types import FrameType
from typing import Any, NoReturn

import psutil

from core.errors import InputError
from core.storage import cache_root
from core.watchdog import watch_this_process

# The command's exit status when the run finished and recorded its results, but some models failed (a converter or
# an interpreter crashed on them): distinct from success (0), an input error (2) and a failed run (1).
FINISHED_WITH_FAILURES = 3
PORT_TAKEN = re.compile(r"address already in use", re.IGNORECASE)
STARTUP_TIMEOUT_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
WORK_ALLOWANCE = 10  # a server that has not answered this many times the startup timeout after its launch is stuck
IDLE_SHARE = 0.05  # a server using less of a processor is not starting: an idle one ticks at about 0.015 s a second

_api: EphemeralAPI | None = None
_begun = False


class EphemeralAPI:
    """Prefect's server, started as Prefect starts its ephemeral one (the same command and environment).

    What it writes to stderr is read here: kept (its last lines) while it starts, so that a server that dies says
    why in the command's error, and passed on to the command's stderr once it answers."""

    def __init__(self) -> None:
        self.answering = threading.Event()
        self._said_lock = threading.Lock()
        self.launched = time.monotonic()  # the first launch: the deadline covers every start again
        self._launch()

    @classmethod
    def start(cls) -> EphemeralAPI:
        return cls()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _command(self) -> list[str]:
        """The server's command, on `self.port` (a test puts a stand-in here)."""
        return [
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
        ]

    def _launch(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            self._command(),
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
        self.heard = [0]  # lines this server has written: its output is progress too
        self.relay = threading.Thread(
            target=self._relay_stderr,
            args=(self.process, self.said, self.heard),
            name="ephemeral-api-stderr",
            daemon=True,
        )
        self.relay.start()

    def _relay_stderr(self, process: subprocess.Popen[bytes], said: collections.deque[str], heard: list[int]) -> None:
        assert process.stderr is not None
        for raw in iter(process.stderr.readline, b""):
            line = raw.decode(errors="replace")
            with self._said_lock:
                heard[0] += 1
                if self.answering.is_set():
                    sys.stderr.write(line)
                    sys.stderr.flush()
                else:
                    said.append(line)

    def wait_until_ready(self, timeout_s: float) -> None:
        """Return once the server answers. A busy machine slows its start (a new database alone takes it 15 s of
        processor time here), so the wait follows the server's progress rather than the clock: it fails when the
        server has done next to nothing (less than `IDLE_SHARE` of a processor, and said nothing) for `timeout_s`,
        and in any case `WORK_ALLOWANCE` times `timeout_s` after its launch; at once, with the server's own error,
        when the server has died. A server whose port was taken is started again on another port, without waiting
        for it to end (its shutdown can hang)."""
        deadline_s = WORK_ALLOWANCE * timeout_s
        mark = self._progress()  # the last time the server was seen working: (when, its processor time, lines)
        while True:
            status = self.process.poll()
            if status is not None or self._port_taken():
                self._stopped_while_starting(status)  # started again elsewhere, or raises
                mark = self._progress()
                continue
            if self._answers():
                with self._said_lock:
                    self.answering.set()
                    for line in self.said:  # what it said while starting (a warning) is not lost
                        sys.stderr.write(line)
                return
            now, cpu, heard = self._progress()
            if heard != mark[2] or cpu - mark[1] >= max(IDLE_SHARE * (now - mark[0]), 0.01):
                mark = (now, cpu, heard)
            idle, waited = now - mark[0], now - self.launched
            if idle > timeout_s or waited > deadline_s:
                self._halt()
                if idle > timeout_s:
                    what = (
                        f"did next to nothing for {idle:.0f} s ({cpu - mark[1]:.1f} s of processor time, no output) "
                        f"without answering (the bound is {STARTUP_TIMEOUT_SETTING}={timeout_s:g}"
                    )
                else:
                    what = (
                        f"did not answer within {waited:.0f} s of its launch, working all along (the deadline is "
                        f"{WORK_ALLOWANCE} times {STARTUP_TIMEOUT_SETTING}={timeout_s:g}"
                    )
                raise RuntimeError(
                    f"Prefect's ephemeral API server {what}: raise it, or start a server with `make server` and set "
                    "PREFECT_API_URL)" + self._cause()
                )
            time.sleep(0.05)

    def _answers(self) -> bool:
        # No proxy: a proxy named in the environment cannot reach this machine's loopback, and would answer an error.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.url}/health", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError):
            return False

    def _progress(self) -> tuple[float, float, int]:
        with self._said_lock:
            heard = self.heard[0]
        return time.monotonic(), self._cpu_seconds(), heard

    def _port_taken(self) -> bool:
        with self._said_lock:
            return any(PORT_TAKEN.search(line) for line in self.said)

    def _stopped_while_starting(self, status: int | None) -> None:
        """Start again on another port when the server's was taken (it said so; it is killed if it has not ended:
        Prefect's shutdown of services that had not started yet can hang); else fail with the server's own error."""
        if status is None:
            self.process.kill()
        self._ended()  # what it wrote, read to the end
        if self._port_taken():
            self._launch()
            point_prefect_at(self.url)
            return
        raise RuntimeError(
            f"Prefect's ephemeral API server exited with status {self.process.returncode} while starting"
            + self._cause()
        )

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
        self._halt()

    def _halt(self) -> None:
        """Stop the server as Prefect stops its own: SIGTERM, and SIGKILL 5 s later."""
        if self.process.poll() is None:
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
    """A command's first act, before its imports: its ending (`install_command_ending`: its outcome last, prompt
    on SIGINT and SIGTERM), then `begin_command`; an input error (an unusable PREFECT_HOME) ends the command here,
    with status 2 and one line naming it."""
    install_command_ending()
    try:
        begin_command()
    except InputError as exc:
        end_command(_say(f"error: {exc}", 2, _ending))


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
            with _ending.holding() if _ending is not None else contextlib.nullcontext():
                if _ending is None or not _ending.sealed():  # else the outcome is out: fd 2 points at the log now
                    os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines(keepends=True):
                if not noise.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def run_command(body: Callable[[], int]) -> int:
    """A command's exit status for `body`: its own, 2 for input the user can fix, 130 for Ctrl-C (SIGINT), 143 for
    SIGTERM, 1 for any other failure; each failure said in one line on stderr, last (the run's log holds the
    details). In the command's own process (`start_command`), that line is the last thing it writes: see
    `CommandEnding`."""
    ending = _ending
    try:
        status = _run_body(body, ending)
    except InputError as exc:
        status = _say(f"error: {exc}", 2, ending)
    except Exception as exc:
        status = _say(f"error: {type(exc).__name__}: {exc}", 1, ending)
    except BaseException as exc:  # KeyboardInterrupt, and Prefect's TerminationSignal (its SIGTERM, during a flow)
        signum = _signal_behind(exc, ending)
        if signum is None:
            raise
        status = _say(SIGNAL_OUTCOMES[signum], 128 + signum, ending)
    finally:
        keep_the_outcome_last()
    # A signal's outcome, said as it came, is the command's whatever the body did after it.
    return status if ending is None else ending.conclude(None, status)


def _run_body(body: Callable[[], int], ending: CommandEnding | None) -> int:
    if ending is None:
        return body()
    ending.adopt_prefects_sigterm_bridge()  # the body runs flows
    ending.body_running = True  # a signal now interrupts the body (KeyboardInterrupt), and only the body
    try:
        return body()
    finally:
        ending.body_running = False


def _say(line: str, status: int, ending: CommandEnding | None) -> int:
    if ending is None:
        print(line, file=sys.stderr)
        return status
    return ending.conclude(line, status)


def _signal_behind(exc: BaseException, ending: CommandEnding | None) -> int | None:
    if ending is not None and ending.signal is not None:
        return ending.signal
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    number = getattr(exc, "signal", None)  # Prefect's TerminationSignal names it
    return number if number in SIGNAL_OUTCOMES else None


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
    if _ending is not None:
        _ending.main_ending.set()
        _ending.finish(status)
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# How a command ends on a signal: SIGINT (Ctrl-C) as an interrupt, SIGTERM (`kill`, a scheduler, a container's
# stop, a CI timeout) alike, each with its line and its status, 128 + the signal's number as a shell reports it.
SIGNAL_OUTCOMES: dict[int, str] = {
    signal.SIGINT: "interrupted: the steps that finished are cached; run the same command again to resume",
    signal.SIGTERM: "terminated: the steps that finished are cached; run the same command again to resume",
}
ENDING_GRACE_S = 3.0  # how long the body is given to unwind after a signal (Prefect records the run as crashed)
PUBLISH_GRACE_S = 60.0  # how long, at most, a publish under way is given to finish or be undone
EXIT_HANDLERS_S = 30.0  # how long the exit handlers (the API server's stop, the workers') are waited for, at most
# Where a publish changes the output folders (core/results/publishing.py): found on a thread's stack, it is let
# finish or be undone before the command exits (tests/test_startup.py checks that these names are still there).
PUBLISHING_MODULE = os.path.join("core", "results", "publishing.py")
PUBLISHING_STEPS = ("swap_in", "recover")

_ending: CommandEnding | None = None


class CommandEnding:
    """A command's last words and exit, in the command's own process (`install_command_ending`).

    Its outcome (a results table, or one line: `error: …`, `interrupted: …`, `terminated: …`) is the last thing it
    writes: once it is out, standard output and error (the file descriptors, which every thread, logging handler
    and native library writes to) point at the run's log file (`work/logs/command-<pid>.log` in the cache, removed
    when nothing was written to it), so that a thread's traceback, Prefect's crash report or its shutdown logs
    land there and not after the outcome.

    SIGINT and SIGTERM end the command promptly, whatever its threads do: Python runs a signal handler only in the
    main thread, between two bytecodes, so not while a native library computes there, and a thread pool's exit
    waits for the steps still running (MCT's calibration: minutes). So a thread of its own is woken by the signal
    itself (`signal.set_wakeup_fd`: the interpreter writes the signal's number to a pipe as it arrives, even when
    a handler such as Prefect's replaces this one) and says the outcome line at once; the handler, when the main
    thread runs it first, says it first (Prefect's own SIGTERM handler, installed during a flow run, is wrapped to
    do the same), so that the line comes before anything the main thread does about the signal. The main thread
    is interrupted (KeyboardInterrupt, or Prefect's TerminationSignal during a flow) and given `ENDING_GRACE_S` to
    unwind; a publish under way is let finish or be undone (`PUBLISH_GRACE_S`). The worker processes are stopped
    meanwhile. Then, whether or not the main thread got there, the exit handlers run (the API server's stop), and
    the process exits with 130 or 143. What a step had not finished is lost; what finished is cached: Prefect
    writes a step's record only once the step has returned (not atomically), and reads a record it cannot parse
    (one cut short) as missing, so that step runs again."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # over the outcome and the terminal: see `holding`
        self._holder: int | None = None  # the thread holding it
        self.status: int | None = None  # the outcome's status, once said
        self.signal: int | None = None  # the first SIGINT or SIGTERM
        self.body_running = False  # whether run_command's body runs: only it is interrupted
        self.interrupted = False  # whether this handler raised KeyboardInterrupt in it (once)
        self.main_ending = threading.Event()  # end_command called
        try:
            self.terminal = os.dup(2)  # the outcome's way out once fd 2 points at the log
        except OSError:  # started with stderr closed
            self.terminal = -1
        self.log_path: Path | None = None
        self._ending_started = False
        self._exit_lock = threading.Lock()
        self._exit_handlers: threading.Thread | None = None
        self._prefects_bridge: Callable[[int, FrameType | None], None] | None = None
        self._previous: dict[int, Any] = {}  # the signals' handlers before `install`
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """The lock, held for moments only, so never waited for long (in case an interrupt ever lost it); the
        thread holding it is known, so that a signal handler run by that very thread does not wait for itself."""
        held = self.lock.acquire(timeout=5)
        if held:
            self._holder = threading.get_ident()
        try:
            yield
        finally:
            if held:
                self._holder = None
                self.lock.release()

    def install(self) -> None:
        """Handle SIGINT and SIGTERM, unless inherited ignored (a command started in the background of a shell
        without job control ignores Ctrl-C, as the shell intends). The main thread's call."""
        self._previous = {number: signal.getsignal(number) for number in SIGNAL_OUTCOMES}
        for number, previous in self._previous.items():
            if previous is not signal.SIG_IGN:
                signal.signal(number, self._on_signal)
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        os.register_at_fork(after_in_child=self._forked)
        threading.Thread(target=self._watch, name="command-ending", daemon=True).start()

    def _forked(self) -> None:
        """A child forked without exec (a process pool's worker) is not the command: it does not say its outcome,
        nor wake the command's watching thread through the pipe they share."""
        global _ending
        if _ending is not self:
            return
        _ending = None
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
            for number, previous in self._previous.items():
                signal.signal(number, previous if previous is not None else signal.SIG_DFL)
        for fd in (self._wake_read, self._wake_write, self.terminal):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        """In the main thread, between bytecodes: say the outcome (`_heard`), then interrupt the body, once (not the
        unwinding, not a publish's undo, not the exit). The watching thread does the rest."""
        if self._heard(number) and self.body_running and not self.interrupted and not self.main_ending.is_set():
            self.interrupted = True
            raise KeyboardInterrupt

    def _heard(self, number: int) -> bool:
        """A signal's first act in the main thread, where it may run before the watching thread is scheduled (a
        busy machine): its line, before anything the main thread does about it (Prefect's crash report). The
        watching thread is woken here too, in case the wakeup pipe was replaced. False when the main thread was
        interrupted while it held the lock (saying an outcome itself, or restoring stderr): the watching thread
        says the line once the lock is free."""
        if self.signal is None:
            self.signal = number
        with contextlib.suppress(OSError):
            os.write(self._wake_write, bytes([number]))
        if self._holder == threading.get_ident():
            return False
        with contextlib.suppress(Exception):
            self.conclude(SIGNAL_OUTCOMES[self.signal], 128 + self.signal)
        return True

    def adopt_prefects_sigterm_bridge(self) -> None:
        """During a flow run Prefect's own SIGTERM handler replaces this one (it raises its TerminationSignal, for
        the flow's crash report): wrapped here, so that it says the outcome first too. Its name is looked up when
        Prefect installs it; should a version of Prefect have none, the watching thread says the line alone."""
        engine = sys.modules.get("prefect.utilities.engine")
        raises = getattr(engine, "_prefect_sigterm_handler", None)
        if engine is None or not callable(raises) or raises is self._prefects_bridge:
            return

        def bridge(number: int, frame: FrameType | None) -> None:
            if _ending is self:  # not in a child forked without exec
                self._heard(number)
            raises(number, frame)

        self._prefects_bridge = bridge
        engine._prefect_sigterm_handler = bridge  # type: ignore[attr-defined]

    def _watch(self) -> None:
        while True:
            try:
                numbers = os.read(self._wake_read, 64)
            except OSError:
                return
            for number in numbers:
                if number in SIGNAL_OUTCOMES:
                    if self.signal is None:
                        self.signal = number
                    self._end()

    def _end(self) -> None:
        with self.holding():
            if self._ending_started:
                return
            self._ending_started = True
        signum = self.signal or signal.SIGTERM
        status = self.conclude(SIGNAL_OUTCOMES[signum], 128 + signum)
        isolation = sys.modules.get("core.isolation")
        if isolation is not None:
            isolation.stop_all_workers()  # what a step waits for from them ends (WorkersStopped): the body unwinds
        began = time.monotonic()
        while not self.main_ending.wait(0.05):  # the main thread's own way out, if it gets there soon
            waited, publishing = time.monotonic() - began, _publishing()
            if not (self.body_running or publishing) or waited > PUBLISH_GRACE_S:
                break
            if waited > ENDING_GRACE_S and not publishing:
                break
        self.finish(status)

    def conclude(self, line: str | None, status: int) -> int:
        """Say the command's outcome: `line` on stderr (None: what the body printed is the outcome), once, and
        point standard output and error at the log. The status of the first outcome said."""
        with self.holding():
            if self.status is None:
                self.status = status
                self._seal(line)
            return self.status

    def _seal(self, line: str | None) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        log = self._open_log()
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        terminal, self.terminal = self.terminal, -1
        if terminal < 0:
            return
        if line is not None:
            # A progress bar (tqdm) ends its line only when it closes: the outcome starts a line of its own.
            text = ("\n" if _a_progress_bar_is_open() else "") + line + "\n"
            with contextlib.suppress(OSError):
                _write_all(terminal, text.encode(errors="replace"))
        os.close(terminal)

    def _open_log(self) -> int:
        try:
            folder = cache_root() / "work" / "logs"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"command-{os.getpid()}.log"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        except OSError:
            return os.open(os.devnull, os.O_WRONLY)
        self.log_path = path
        return fd

    def finish(self, status: int) -> NoReturn:
        """Run the exit handlers, once, for `EXIT_HANDLERS_S` at most, and exit with the outcome's status."""
        status = self.conclude(None, status)
        with self._exit_lock:
            if self._exit_handlers is None:
                self._exit_handlers = threading.Thread(target=self._run_exit_handlers, name="command-exit", daemon=True)
                self._exit_handlers.start()
        self._exit_handlers.join(EXIT_HANDLERS_S)
        os._exit(status)

    def _run_exit_handlers(self) -> None:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(OSError):
            if self.log_path is not None and self.log_path.stat().st_size == 0:
                self.log_path.unlink()

    def sealed(self) -> bool:
        return self.status is not None


def install_command_ending() -> None:
    """Make this process a command whose outcome is its last output and that SIGINT and SIGTERM end promptly
    (`CommandEnding`). Called by `start_command`, in the main thread, before anything else starts."""
    global _ending
    if _ending is None:
        ending = CommandEnding()
        ending.install()
        _ending = ending


def _publishing() -> bool:
    """Whether a thread is changing the output folders: a publish, or the recovery of an interrupted one."""
    for frame in sys._current_frames().values():
        walked: FrameType | None = frame
        while walked is not None:
            code = walked.f_code
            if code.co_name in PUBLISHING_STEPS and code.co_filename.endswith(PUBLISHING_MODULE):
                return True
            walked = walked.f_back
    return False


def _a_progress_bar_is_open() -> bool:
    """Whether a tqdm bar is on the terminal, its line unfinished. Its set of bars is copied at once (a plain set's
    copy runs no Python code, so no other thread adds a bar meanwhile, as MCT does as its calibration starts)."""
    tqdm_module = sys.modules.get("tqdm.std")
    bars = getattr(getattr(getattr(tqdm_module, "tqdm", None), "_instances", None), "data", None)
    if not isinstance(bars, set):
        return False
    return any(bar is not None and not getattr(bar, "disable", True) for bar in (ref() for ref in list(bars)))


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]
