"""Shared fixtures: a fresh database per test, the shared candle files, Prefect.

Tests run on a temporary SQLite file unless BTC_LSTM_TEST_DATABASE_URL names a
Postgres server, in which case each test gets an empty database on that server.
"""

import os
import uuid

# Library code logs outside flow runs too (fixtures, direct calls), where
# Prefect's API log handler would warn for each line once btc_lstm is among
# its extra loggers.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
from collections.abc import Callable, Iterator
from pathlib import Path

# Prefect binds its console log handler to the sys.stderr of the moment it is
# first imported. Importing it here binds it to pytest's session-wide capture
# instead of one test's capsys stream, which is closed after that test.
import prefect  # noqa: E402, F401, I001
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from btc_lstm.migrate import upgrade_database
from btc_lstm.store.connection import create_db_engine
from tests.factories import make_candles  # noqa: F401 - tests import it from here

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_CANDLES = REPOSITORY.parent / "shared" / "data" / "binance_daily"
TEST_DATABASE_ENV = "BTC_LSTM_TEST_DATABASE_URL"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's own BTC_LSTM_* settings out of every test."""
    for name in list(os.environ):
        if name.startswith("BTC_LSTM_") and name != TEST_DATABASE_ENV:
            monkeypatch.delenv(name)


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """Return the URL of an empty database that is removed after the test."""
    server_url = os.environ.get(TEST_DATABASE_ENV)
    if not server_url:
        yield f"sqlite:///{tmp_path / 'btc_lstm.db'}"
        return

    name = f"btc_lstm_test_{uuid.uuid4().hex[:12]}"
    server = sa.make_url(server_url)
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def open_engine() -> Iterator[Callable[[str], Engine]]:
    """Return a factory of engines that are all disposed after the test."""
    engines: list[Engine] = []

    def open_database(url: str) -> Engine:
        engines.append(create_db_engine(url))
        return engines[-1]

    yield open_database
    for created in engines:
        created.dispose()


@pytest.fixture
def engine(database_url: str, open_engine: Callable[[str], Engine]) -> Engine:
    """Return an engine on a database upgraded to the newest schema."""
    created = open_engine(database_url)
    upgrade_database(created)
    return created


def require_shared_file(name: str) -> Path:
    """Return a shared candle file; skip the test if absent, or fail under CI."""
    path = SHARED_CANDLES / name
    if path.is_file():
        return path
    message = f"shared candle file {path} is missing"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run with the shared data beside the clone")
    pytest.skip(f"{message}; it sits in ../shared/data next to a full checkout")


@pytest.fixture
def btc_csv() -> Path:
    return require_shared_file("Binance_BTCUSDT_d.csv")


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Run flows against one temporary Prefect server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def flow_environment(
    prefect_harness: None, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Point the flows at this test's database; close their engines afterwards."""
    from flows.tasks import dispose_engines

    monkeypatch.setenv("BTC_LSTM_DATABASE_URL", database_url)
    yield database_url
    dispose_engines()
