"""How the run's logs show. Input errors are the user's to fix, not a bug: Prefect's run logs show them as one line,
without the traceback Prefect attaches to every failure (it would bury the message that says what to change). What
the command prints as its outcome is not also shown among the logs on its terminal."""

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


# A log record's `extra`: what the command prints itself as its outcome (the results table), which its terminal shows
# once, while the Prefect UI keeps the record among the run's logs.
PRINTED_AS_THE_OUTCOME = {"printed_as_the_outcome": True}


class WithoutTheOutcome(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "printed_as_the_outcome", False)


def print_the_outcome_once() -> None:
    """Log records marked PRINTED_AS_THE_OUTCOME reach the API, not the terminal: the command prints them."""
    # Deferred: `core` is imported by the command before Prefect, whose server starts meanwhile (core.startup).
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, WithoutTheOutcome) for f in handler.filters
        ):
            handler.addFilter(WithoutTheOutcome())
