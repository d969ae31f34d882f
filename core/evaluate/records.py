"""The records of evaluate/ (see core/records.py for what a record is)."""

from __future__ import annotations

from typing import Any

from core.records import Record

# What to do about a figure taken under load (the step's warning, the tables' footnote): a rerun would serve it from
# the cache, and `latency_repeats` is an input of measure_latency alone.
REMEASURE_HINT = "to measure again, run on a quiet machine with another latency_repeats (no other step depends on it)"


class Latency(Record):
    """Median milliseconds per image; Keras models have no single-thread figure."""

    one_thread_ms: float | None
    all_threads_ms: float
    repeats: int
    machine: str
    # The figures (as_results' names) still taken while other work loaded the CPU after the retries, the timing's
    # threads getting less than measure_latency.MIN_CPU_SHARE of it: empty when every figure was taken quiet.
    under_load: tuple[str, ...] = ()
    load: str | None = None  # what each timing got of the CPU, and the load average; None: measured before this

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A record pickled before `under_load` and `load` existed loads with their defaults."""
        state["__dict__"].setdefault("under_load", ())
        state["__dict__"].setdefault("load", None)
        super().__setstate__(state)

    def as_results(self) -> dict[str, float | None]:
        return {"1_thread": self.one_thread_ms, "all_threads": self.all_threads_ms}
