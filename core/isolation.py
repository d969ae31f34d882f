"""Native code that runs a model the user brought runs in a child process, so that its crash costs one step.

TensorFlow Lite's interpreter, TensorFlow's converter and the kernels they call are C++: on some models they abort
(EfficientNetB0's 16x8 model: SIGABRT at its first invoke), segfault or run out of memory, and in the command's own
process that ends the command with no result at all. Here each such call runs in a `Child`, a spawned Python process
of its own; when it dies, the caller gets `ChildDied` naming the signal and the library's last words (what the
child printed, which goes to its own log file), and a new child serves the next call.

`Workers` keeps up to one child per core, started on first use and stopped after `idle_seconds` without work: a
run's calls come seconds apart, so the children (and the TensorFlow each imports) serve many of them.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.connection
import multiprocessing.util
import os
import pickle
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
LAST_WORDS_LINES = 6
LAST_WORDS_CHARS = 600
CHATTER = ("INFO: Created TensorFlow Lite", "INFO: Initialized TensorFlow Lite")  # said on every model: no last words


class ChildDied(RuntimeError):
    """The child process ended while it ran a call: killed by a signal, or exited."""

    def __init__(self, exitcode: int | None, last_words: str, log_path: str):
        self.exitcode, self.last_words, self.log_path = exitcode, last_words, log_path
        said = f": {last_words}" if last_words else " (it printed nothing)"
        super().__init__(f"{self.how()}{said}")

    def how(self) -> str:
        """'aborted (SIGABRT)', 'killed (SIGKILL, out of memory?)', 'exited with status 3'."""
        if self.exitcode is None or self.exitcode >= 0:
            return f"exited with status {self.exitcode}"
        number = -self.exitcode
        try:
            name = signal.Signals(number).name
        except ValueError:
            return f"killed by signal {number}"
        verbs = {"SIGABRT": "aborted", "SIGSEGV": "crashed", "SIGBUS": "crashed", "SIGFPE": "crashed"}
        if name == "SIGKILL":
            return "killed (SIGKILL: out of memory, or stopped from outside)"
        return f"{verbs.get(name, 'killed')} ({name})"

    def __reduce__(self) -> tuple[Any, ...]:
        return ChildDied, (self.exitcode, self.last_words, self.log_path)


class WorkersStopped(RuntimeError):
    """The command is ending (Ctrl-C): its workers were stopped under a call, which says nothing of the model."""


def portable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling (the parent then re-raises it as it was), else a
    RuntimeError with its type and message (some of TensorFlow's need arguments pickling does not keep)."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _serve(connection: multiprocessing.connection.Connection) -> None:
    """The child's loop: point its standard output and error (the native libraries' included) at the log file it
    is first sent, then run each (function, arguments) it is sent and send back ('ok', result) or ('raised', error)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the command's to handle: it stops its workers
    log_path, nice = connection.recv()
    if nice:  # before any thread starts: Linux keeps a niceness per thread, and new threads inherit it
        os.nice(nice)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    import core  # noqa: F401  (quietens TensorFlow before a call imports it)

    while True:
        try:
            fn, kwargs = connection.recv()
        except EOFError:  # the parent closed its end: stop
            return
        try:
            answer: tuple[str, Any] = ("ok", fn(**kwargs))
        except BaseException as exc:  # noqa: BLE001  (everything crosses back to the caller)
            answer = ("raised", portable(exc))
        connection.send(answer)


class Child:
    """One spawned worker process; calls run in it one at a time."""

    def __init__(self, log_dir: Path, name: str = "worker", nice: int = 0):
        context = multiprocessing.get_context("spawn")
        self._connection, theirs = context.Pipe()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.process = context.Process(target=_serve, args=(theirs,), name=name)
        self.process.start()
        theirs.close()
        self.log_path = log_dir / f"{name}-{self.process.pid}.log"
        self._connection.send((str(self.log_path), nice))
        self._stopped = False  # by its owner (the command is ending): a call it ends says nothing of the model

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def call(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """`fn(**kwargs)` in the child: its result or what it raised; ChildDied when the child dies meanwhile."""
        start = self.log_path.stat().st_size if self.log_path.is_file() else 0
        try:
            self._connection.send((fn, kwargs))
        except (BrokenPipeError, ConnectionResetError):
            pass  # dead already: said below
        ready = multiprocessing.connection.wait([self._connection, self.process.sentinel])
        if self._connection in ready:
            try:
                outcome, value = self._connection.recv()
            except (EOFError, OSError):
                pass  # it died after all: below
            else:
                if outcome == "raised":
                    raise value
                return value
        self.process.join()
        if self._stopped:
            raise WorkersStopped("the worker processes were stopped: the command is ending")
        raise ChildDied(self.process.exitcode, last_words(self.log_path, start), str(self.log_path))

    def stop(self) -> None:
        """Kill it now (it writes only to temporary names: nothing is lost)."""
        self._stopped = True
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self._connection.close()


def last_words(log_path: Path, start: int) -> str:
    """The last lines the child wrote to its log after `start`, joined on one line."""
    try:
        with open(log_path, "rb") as log:
            log.seek(start)
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(CHATTER)]
    said = " | ".join(lines[-LAST_WORDS_LINES:])
    return said if len(said) <= LAST_WORDS_CHARS else "..." + said[-LAST_WORDS_CHARS:]


class InProcess:
    """Where no child can be started: calls run in this process, with no isolation."""

    def call(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        return fn(**kwargs)


_ALL_WORKERS: weakref.WeakSet[Workers] = weakref.WeakSet()


def stop_all_workers() -> None:
    """Stop every child of every `Workers` now, for good: the command is ending (SIGINT, SIGTERM: see
    core/startup.py), and a call under way raises WorkersStopped in its caller."""
    for workers in list(_ALL_WORKERS):
        workers.close()


# Added to the niceness of the workers that evaluate TFLite models: under contention the run's long chains (MCT and
# the IMX500 compile; the converter's calibration and its quantized variants) get the cores first, and the
# evaluations, which can run at any time, fill the rest. A quiet machine runs them at full speed all the same.
YIELDING = 5


class Workers:
    """Up to `size` children (default: one per core) shared by the calls of this process.

    A daemonic process (a Dask worker running a flow) may not start processes: there calls run in the process, one
    at a time, without the isolation.
    """

    def __init__(
        self,
        name: str,
        log_dir: Callable[[], Path],
        idle_seconds: float = 10.0,
        size: int | None = None,
        nice: int = 0,
    ):
        self.name = name  # its children's log files are <log_dir>/<name>-<pid>.log
        self.nice = nice  # added to its children's niceness: work that yields the cores to the command's own
        self.log_dir = log_dir
        self.idle_seconds = idle_seconds
        self.size = size or os.cpu_count() or 1
        self._lock = threading.Condition()
        self._in_process = threading.Lock()
        self._children: set[Child] = set()  # alive or starting, busy or idle
        self._idle: list[Child] = []
        self._starting = 0
        self._idle_timer: threading.Timer | None = None
        self._close_registered = False
        self._closed = False  # at the command's exit: no child starts again (a step's retry after Ctrl-C)
        _ALL_WORKERS.add(self)

    def run(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """`fn(**kwargs)` in a child (fn and its arguments must pickle): its result, or what it raised."""
        with self.child() as child:
            return child.call(fn, **kwargs)

    @contextmanager
    def child(self) -> Iterator[Child | InProcess]:
        """A child held for several calls (a model loaded once, then fed batch after batch)."""
        if multiprocessing.current_process().daemon:
            with self._in_process:
                yield InProcess()
            return
        child = self._take()
        try:
            yield child
        finally:
            self._give_back(child)

    @property
    def busy(self) -> int:
        """Children at work now (a test waits for one to have its job)."""
        with self._lock:
            return self._busy_locked()

    def _take(self) -> Child:
        with self._lock:
            while True:
                if self._closed:
                    raise WorkersStopped("the worker processes are stopped: the command is ending")
                self._cancel_idle_timer()
                while self._idle and not self._idle[-1].alive:  # died while idle (killed from outside)
                    self._children.discard(self._idle.pop())
                if self._idle:
                    return self._idle.pop()
                if len(self._children) + self._starting < self.size:
                    self._starting += 1
                    break
                self._lock.wait()
            self._register_close()
        try:
            child = Child(self.log_dir(), self.name, self.nice)
        finally:
            with self._lock:
                self._starting -= 1
                self._lock.notify()
        with self._lock:
            self._children.add(child)
        return child

    def _give_back(self, child: Child) -> None:
        with self._lock:
            keep = child.alive and not self._closed
            if keep:
                self._idle.append(child)
            else:
                self._children.discard(child)
            self._lock.notify()
            if not self._busy_locked() and self._idle:
                self._idle_timer = threading.Timer(self.idle_seconds, self._close_if_idle)
                self._idle_timer.daemon = True
                self._idle_timer.start()
        if not keep:
            child.stop()

    def _busy_locked(self) -> int:
        return len(self._children) + self._starting - len(self._idle)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _register_close(self) -> None:
        if not self._close_registered:
            # Registered after multiprocessing's own exit handler, so it runs first: that one waits for every
            # child to end. Its logger's first use registers that handler again, last: done here first.
            multiprocessing.util.get_logger()
            atexit.register(self.close)
            self._close_registered = True

    def _close_if_idle(self) -> None:
        with self._lock:
            if self._busy_locked():
                return
            idle, self._idle = self._idle, []
            self._children.difference_update(idle)
        for child in idle:
            child.stop()

    def close(self) -> None:
        """Stop every child now, idle or busy, for good: at the command's exit, where nobody waits for a result
        (a busy one's caller gets ChildDied)."""
        with self._lock:
            self._closed = True
            self._cancel_idle_timer()
            children, self._children, self._idle = list(self._children), set(), []
            self._lock.notify_all()
        for child in children:
            child.stop()
