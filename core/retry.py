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
