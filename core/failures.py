"""A step that failed on one model: the model's own failure, recorded, while the run goes on with the others.

What fails here is native code running a model the user brought (core/isolation.py): an interpreter that aborts, a
converter that crashes, a kernel that refuses a tensor. Such a failure is a fact about the model, as a result is: it
is returned, cached by content like a result (a rerun does not crash again on the same model), shown in the table
and results.json, and it gives the command its own exit status (core/startup.py: FINISHED_WITH_FAILURES).
"""

from __future__ import annotations

from core.errors import StepError
from core.isolation import ChildDied
from core.records import Record


class ModelFailure(Record):
    """One model's step that failed: the model is left out of the comparison (or, for its latency, of that column)."""

    model: str  # its name in the results: tflite_int16x8
    step: str  # convert, evaluate or latency
    reason: str  # one line: what happened, and what the library said last
    log: str | None = None  # the worker's log file, with all the library printed

    def describe(self) -> str:
        return f"{self.step} failed: {self.reason}"


class ModelCodeFailed(RuntimeError):
    """Raised in the parent when the model's own code failed in its worker process: it crashed (ChildDied), or the
    library raised on the model (a kernel that cannot prepare a tensor)."""

    def __init__(self, cause: BaseException):
        self.cause = cause
        super().__init__(reason_of(cause))


def reason_of(cause: BaseException) -> str:
    """One line saying what happened: 'aborted (SIGABRT): <its last words>', or the error's type and first lines."""
    if isinstance(cause, ChildDied):
        return str(cause)
    lines = list(dict.fromkeys(line.strip() for line in str(cause).splitlines() if line.strip()))  # once each
    said = " | ".join(lines[:3])
    said = said if len(said) <= 300 else said[:297] + "..."
    return f"{type(cause).__name__}: {said}".rstrip(": ")


def library_said(error: StepError) -> str:
    """What the library said in a StepError, without the step's own preamble."""
    return reason_of(error.__cause__) if error.__cause__ is not None else str(error)


def failure(model: str, step: str, error: ModelCodeFailed) -> ModelFailure:
    log = error.cause.log_path if isinstance(error.cause, ChildDied) else None
    return ModelFailure(model=model, step=step, reason=str(error), log=log)


class ModelFailed(RuntimeError):
    """Raised where a model's failure ends what the caller does (a repair trial, a benchmark)."""

    def __init__(self, failure: ModelFailure):
        self.failure = failure
        super().__init__(f"{failure.model}: {failure.describe()}")
