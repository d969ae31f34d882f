"""Starting a command quickly.

Without PREFECT_API_URL, a command runs on an ephemeral Prefect API: a Prefect server in a process of its own,
which takes seconds to start (it imports the whole server and prepares its database). Prefect would start it at
the first flow run, after importing its server module into this process too (about 2 s of this process's time,
for one class); the command instead starts the same server itself, before it imports Prefect (unless a setting may
name a server), on a free loopback port, points this process at it, and imports TensorFlow (what the first step
needs) meanwhile.

The command calls `begin_command` before its own imports (a second and more), so the server starts while they run,
and `end_command` last. Before anything starts, a watchdog is set up, so that neither that server nor any other
process the command starts outlives it (`core/watchdog.py`). At a normal exit the server is stopped as Prefect stops
its own.
"""

from __future__ import annotations

import atexit
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
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from core.watchdog import watch_this_process

PORT_IN_USE = 3  # uvicorn's exit status when it cannot bind its port

_api: EphemeralAPI | None = None
_begun = False


@dataclass
class EphemeralAPI:
    """Prefect's server, started as Prefect starts its ephemeral one (the same command and environment)."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @classmethod
    def start(cls) -> EphemeralAPI:
        port = free_port()
        process = subprocess.Popen(
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
                str(port),
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
            # Ctrl-C at the terminal reaches the command, which stops the server once Prefect has sent it what it
            # holds; a server in the terminal's process group would die first. The watchdog covers a killed command.
            start_new_session=True,
        )
        return cls(process=process, port=port)

    def wait_until_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.process.poll()
            if status == PORT_IN_USE:  # taken between choosing it and binding it: start again elsewhere
                restarted = EphemeralAPI.start()
                self.process, self.port = restarted.process, restarted.port
                point_prefect_at(self.url)
                continue
            if status is not None:
                raise RuntimeError(f"Prefect's ephemeral API server exited with status {status} while starting")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"Prefect's ephemeral API server did not answer within {timeout_s:.0f} s "
            "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); start one with `make server` and set PREFECT_API_URL"
        )

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
                self.process.wait()


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


def begin_command() -> None:
    """Set up the watchdog and, when no PREFECT_API_URL is set, start the ephemeral API without waiting for it.

    Reading Prefect's settings means importing Prefect (a second); unless a Prefect setting is visibly given (in
    the environment or a settings file), the server is started before that, and stopped again in the rare case
    the settings then name a server after all."""
    global _api, _begun
    if _begun:
        return
    _begun = True
    watch_this_process()
    if not _prefect_settings_given():
        _api = EphemeralAPI.start()
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    wanted = not PREFECT_API_URL.value() and PREFECT_SERVER_EPHEMERAL_ENABLED.value()
    if _api is not None and not wanted:
        _api.stop()
        _api = None
    elif _api is None and wanted:
        _api = EphemeralAPI.start()
    if _api is not None:
        atexit.register(_api.stop)
        point_prefect_at(_api.url)


def _prefect_settings_given() -> bool:
    """Whether Prefect's API URL or its ephemeral mode may be set anywhere Prefect reads its settings (the
    environment, the profiles, its settings files, which are searched for the words)."""
    if any(("API_URL" in name or "EPHEMERAL" in name) and name.startswith("PREFECT_") for name in os.environ):
        return True
    if "PREFECT_PROFILE" in os.environ or "PREFECT_PROFILES_PATH" in os.environ:
        return True
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()
    for file in [home / "profiles.toml", Path("prefect.toml"), Path(".env"), Path("pyproject.toml")]:
        try:
            text = file.read_text(errors="replace").lower()
        except OSError:
            continue
        if "api_url" in text or "ephemeral" in text or ("url" in text and ("[api]" in text or "prefect.api" in text)):
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
