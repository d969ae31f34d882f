"""Errors the user can fix by changing their input, as opposed to bugs or passing faults."""


class InputError(Exception):
    """A problem with what the user gave us (configuration, images, labels, model).

    Retrying cannot help, so the workflow's retry policy never retries these.
    """


class ConfigError(InputError):
    """One or more problems found in a configuration, all reported together."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = [
            f"configuration invalid{where} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"
        ]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class StepError(Exception):
    """An external library (MCT, the TFLite converter, TensorFlow) failed inside a step."""

    def __init__(self, step: str, model: str, cause: BaseException):
        self.step, self.model = step, model
        super().__init__(f"step '{step}' failed for model {model}: {type(cause).__name__}: {cause}")

    def __reduce__(self) -> tuple:
        """Pickled with its cause (what the library said), so that it crosses back from a worker process whole."""
        from core.isolation import portable

        cause = portable(self.__cause__) if self.__cause__ is not None else None
        return _rebuilt_step_error, (self.step, self.model, str(self), cause)


def _rebuilt_step_error(step: str, model: str, message: str, cause: BaseException | None) -> StepError:
    error = StepError.__new__(StepError)
    Exception.__init__(error, message)
    error.step, error.model = step, model
    error.__cause__ = cause
    return error
