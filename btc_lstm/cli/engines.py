"""Engines that one CLI command opens, closed when the command ends."""

import sys
from typing import Any

_engines: list[Any] = []


def open_engine(database_url: str) -> Any:
    from btc_lstm.store.connection import create_db_engine

    _engines.append(create_db_engine(database_url))
    return _engines[-1]


def close_engines() -> None:
    while _engines:
        _engines.pop().dispose()
    if "flows.tasks" in sys.modules:
        sys.modules["flows.tasks"].dispose_engines()
