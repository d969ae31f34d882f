"""The kinds of model the workflow knows, by the name the configuration and results.json use."""

from __future__ import annotations

from core.kinds.classification import Classification
from core.kinds.kind import ModelKind

CLASSIFICATION = Classification()
KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (CLASSIFICATION,)}


def kind_named(name: str) -> ModelKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown kind of model {name!r}: expected one of {', '.join(KINDS)}") from None


def kind_of_results(results: dict) -> ModelKind:
    """The kind a results.json was made for (files written before the key existed are classification's)."""
    return kind_named(results.get("task", CLASSIFICATION.name))
