"""The typed records the workflow's steps hand each other.

Each is an immutable pydantic model: an editor knows what a step returns, a misspelt field fails at
once, and every record pickles for Prefect's result persistence and hashes for the content cache.
Records hold paths and small values, never TensorFlow objects. Their `model_dump()` is what lands in
results.json, so field names are the names users read there."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
