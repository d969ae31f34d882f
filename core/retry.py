"""The retry policy shared by the workflow's steps: retry passing faults, never the user's input errors."""

from __future__ import annotations

from typing import Any

from core.errors import InputError


def _retry_unless_input_error(task, task_run, state) -> bool:
    try:
        state.result()
    except InputError:
        return False
    except Exception:
        return True
    return True


RETRY_OPTIONS: dict[str, Any] = dict(retries=1, retry_delay_seconds=2, retry_condition_fn=_retry_unless_input_error)


def last_attempt() -> bool:
    """Whether this run of the current task is its last try: a step that turns a library's error into a verdict on
    the model (an unsupported variant) first lets the retry rule out a passing fault (MCT's global state, shared by
    the threads that quantize side by side, is one)."""
    from prefect.runtime import task_run

    return int(task_run.run_count or 1) > int(RETRY_OPTIONS["retries"])
