"""Native code on a user's model runs in worker processes: a crash there costs that call, not the command, and the
caller learns how the worker died and what it said last."""

import functools
import os
import threading
import time

import pytest

from core.isolation import ChildDied, Workers


def say_and_abort(words: str) -> None:
    os.write(2, words.encode() + b"\n")
    os.abort()


def exit_with(status: int) -> None:
    os._exit(status)


def fail(message: str) -> None:
    raise ValueError(message)


@pytest.fixture
def workers(tmp_path):
    pool = Workers("test-worker", lambda: tmp_path / "logs", idle_seconds=30, size=2)
    yield pool
    pool.close()


def test_a_worker_that_aborts_costs_that_call_and_names_the_signal_and_its_last_words(workers, tmp_path):
    with pytest.raises(ChildDied) as died:
        workers.run(say_and_abort, words="Check failed: tensor->bytes == bytes_required")
    message = str(died.value)
    assert message.startswith("aborted (SIGABRT): ")
    assert "Check failed: tensor->bytes == bytes_required" in message
    assert died.value.log_path.startswith(str(tmp_path / "logs" / "test-worker-"))
    # The next call gets a new worker.
    assert workers.run(os.getpid) != os.getpid()


def test_an_exit_and_a_kill_are_told_apart(workers):
    with pytest.raises(ChildDied, match=r"^exited with status 7 \(it printed nothing\)$"):
        workers.run(exit_with, status=7)
    with pytest.raises(ChildDied, match=r"^killed \(SIGKILL: out of memory"):
        workers.run(kill_myself)


def kill_myself() -> None:
    os.kill(os.getpid(), 9)


def test_what_the_call_raises_reaches_the_caller_as_it_was_and_the_worker_serves_on(workers):
    first = workers.run(os.getpid)
    with pytest.raises(ValueError, match="bad model"):
        workers.run(fail, message="bad model")
    assert workers.run(os.getpid) == first


def test_a_crash_does_not_touch_a_call_running_beside_it(workers):
    slow = threading.Thread(target=lambda: results.append(workers.run(functools.partial(sleep_then, 1.0, "done"))))
    results: list[str] = []
    slow.start()
    while workers.busy == 0:  # the slow call has its worker
        time.sleep(0.01)
    with pytest.raises(ChildDied):
        workers.run(say_and_abort, words="boom")
    slow.join()
    assert results == ["done"]


def sleep_then(seconds: float, value: str) -> str:
    time.sleep(seconds)
    return value


def test_a_held_worker_keeps_its_state_between_calls(workers):
    with workers.child() as child:
        assert child.call(os.getpid) == child.call(os.getpid)


def niceness() -> int:
    return os.nice(0)


def thread_niceness() -> int:
    """The niceness of a thread started now (Linux keeps one per thread)."""
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(os.nice(0)))
    thread.start()
    thread.join()
    return seen[0]


def test_yielding_workers_run_below_the_commands_priority_and_so_do_their_threads(tmp_path):
    from core.evaluate.isolated import LATENCY_WORKERS, MODEL_WORKERS
    from core.isolation import YIELDING

    ours = os.nice(0)
    yielding = Workers("yielding", lambda: tmp_path, nice=YIELDING, size=1)
    try:
        assert yielding.run(niceness) == min(ours + YIELDING, 19)
        assert yielding.run(thread_niceness) == min(ours + YIELDING, 19)
    finally:
        yielding.close()
    assert MODEL_WORKERS.nice == YIELDING, "the evaluations' interpreters yield to the command's own work"
    assert LATENCY_WORKERS.nice == 0, "latencies are measured at the command's own priority"
