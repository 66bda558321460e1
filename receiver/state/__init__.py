"""State stores: the protocol and its backends (SQLite by default)."""

from __future__ import annotations

from receiver.config import StateConfig
from receiver.state.base import Baseline, StartRecord, StateStore


def open_store(config: StateConfig) -> StateStore:
    """The store the configuration names. Does not create tables: see ``StateStore.init``."""
    if config.backend == "sqlite":
        from receiver.state.sqlite import SQLiteStore

        return SQLiteStore(config.path)
    from receiver.state.dynamodb import DynamoDBStore

    return DynamoDBStore(config)


__all__ = ["Baseline", "StartRecord", "StateStore", "open_store"]
