"""Input errors are the user's to fix, not a bug: Prefect's run logs show them as one line, without the
traceback Prefect attaches to every failure (it would bury the message that says what to change)."""

from __future__ import annotations

import logging

from core.errors import InputError

PREFECT_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs", "prefect.engine")


class InputErrorsWithoutTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        if exc_info and isinstance(exc_info[1], InputError):
            record.exc_info, record.exc_text = None, None
        return True


def quieten_input_errors() -> None:
    """Install the filter on Prefect's run loggers, once."""
    for name in PREFECT_RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, InputErrorsWithoutTraceback) for f in logger.filters):
            logger.addFilter(InputErrorsWithoutTraceback())
