"""What a device compiler run as a command said, in a line or two a results row can hold: the gist of its output
when it refused a model, and how it ended when it did not end by itself (killed by a signal, or timed out)."""

from __future__ import annotations

import re
import signal

# TensorFlow's C++ log lines ("2026-01-01 10:00:00.123456: I tensorflow/...") and its CPU-feature notice, printed by
# every run, a tool's warnings and a traceback's markers under the failing expression: never the reason of a failure.
_NOISE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] |^To enable the following instructions|^Warning: |^[\^~ ]+$"
)
REASON_LENGTH = 300


def one_line(text: str, length: int = REASON_LENGTH) -> str:
    """`text` with its whitespace collapsed, cut to `length` characters."""
    line = " ".join(text.split())
    return line if len(line) <= length else line[: length - 1] + "…"


def last_meaningful_lines(output: str, count: int = 2) -> str:
    """The last `count` lines of a command's output that are neither blank nor a library's routine logging, as one
    line; after a Python traceback, its last line alone (the exception)."""
    lines = [line.strip() for line in output.splitlines() if line.strip() and not _NOISE.match(line.strip())]
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        count = 1
    return one_line(" ".join(lines[-count:])) if lines else "no message"


def signal_name(returncode: int) -> str:
    """A negative exit status (subprocess's "killed by signal N") as the signal's name."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def crashed(compiler: str, returncode: int, output: str) -> str:
    return f"{compiler} crashed (killed by {signal_name(returncode)}): {last_meaningful_lines(output)}"


def timed_out(compiler: str, seconds: float) -> str:
    return f"{compiler} did not finish within {seconds:.0f} s"
