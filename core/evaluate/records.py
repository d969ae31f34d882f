"""The records of evaluate/ (see core/records.py for what a record is)."""

from __future__ import annotations

from core.records import Record


class Latency(Record):
    """Median milliseconds per image; Keras models have no single-thread figure."""

    one_thread_ms: float | None
    all_threads_ms: float
    repeats: int
    machine: str

    def as_results(self) -> dict[str, float | None]:
        return {"1_thread": self.one_thread_ms, "all_threads": self.all_threads_ms}
