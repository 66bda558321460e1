"""State stores: the protocol and its backends (SQLite by default)."""

from __future__ import annotations

from receiver.config import StateConfig
from receiver.state.base import (
    Baseline,
    DecisionRecord,
    PipelineDecision,
    StartRecord,
    StateStore,
)


def open_store(config: StateConfig) -> StateStore:
    """The store the configuration names. A DynamoDB table is not created here (see
    ``StateStore.init``); an SQLite file gets its schema when first opened."""
    if config.backend == "sqlite":
        from receiver.state.sqlite import SQLiteStore

        return SQLiteStore(config.path)
    from receiver.state.dynamodb import DynamoDBStore

    return DynamoDBStore(config)


__all__ = ["Baseline", "DecisionRecord", "PipelineDecision", "StartRecord", "StateStore",
           "open_store"]
