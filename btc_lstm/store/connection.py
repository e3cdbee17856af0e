"""Database URLs, engines for SQLite and Postgres, and the per-series lock."""

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from btc_lstm.candles import Series
from btc_lstm.errors import DatabaseError

SQLITE_BUSY_TIMEOUT_MS = 30_000


def mask_database_url(database_url: str) -> str:
    """Return the URL with its password replaced by ***, for logs and errors."""
    try:
        return sa.make_url(database_url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable database URL>"


def normalize_database_url(database_url: str) -> sa.URL:
    """Parse a database URL, choosing psycopg 3 for a bare postgresql:// URL.

    Raises:
        DatabaseError: the URL cannot be parsed.
    """
    try:
        url = sa.make_url(database_url)
    except sa.exc.ArgumentError as exc:
        raise DatabaseError(
            f"invalid database URL {mask_database_url(database_url)!r}; set "
            "BTC_LSTM_DATABASE_URL to a SQLAlchemy URL such as sqlite:///btc_lstm.db "
            "or postgresql://user@host/dbname"
        ) from exc
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def create_db_engine(database_url: str) -> Engine:
    """Create an engine and check that the database can be opened.

    SQLite connections use WAL journaling and a busy timeout so that a reader and a
    writer, or two writers, wait for each other instead of failing at once.

    Raises:
        DatabaseError: the URL is invalid, its driver is not installed, or the
            database cannot be opened.
    """
    url = normalize_database_url(database_url)
    masked = url.render_as_string(hide_password=True)
    try:
        engine = sa.create_engine(url, pool_pre_ping=True)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(
            f"cannot use database URL {masked!r}: {exc}; use sqlite:///PATH or "
            "postgresql://USER@HOST/DBNAME"
        ) from exc
    if engine.dialect.is_async or engine.dialect.name not in ("sqlite", "postgresql"):
        engine.dispose()
        raise DatabaseError(
            f"unsupported database URL {masked!r}; use sqlite:///PATH or "
            "postgresql://USER@HOST/DBNAME, without an async driver"
        )
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _configure_sqlite_connection)
        sa.event.listen(engine, "begin", _begin_sqlite_immediately)
    try:
        with engine.connect():
            pass
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseError(
            f"cannot open database {masked!r}: {reason}; check BTC_LSTM_DATABASE_URL "
            "and that the server is running and the folder exists"
        ) from exc
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event open transactions instead of the sqlite3
    # module, which would otherwise run DDL, such as migrations, outside of one.
    # See: https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#serializable-isolation-savepoints-transactional-ddl
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _begin_sqlite_immediately(connection: Connection) -> None:
    # BEGIN IMMEDIATE takes the write lock up front, so a second writer waits for
    # the busy timeout instead of failing when its read snapshot turns stale.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def series_lock(engine: Engine, series: Series) -> Iterator[None]:
    """Hold an exclusive lock on one series across processes, waiting for it.

    Postgres uses a session-level advisory lock, so runs on different machines
    exclude each other. SQLite uses an advisory file lock beside the database
    file, which covers the processes of one machine, the only ones that can share
    a SQLite file safely. An in-memory SQLite database takes no lock.
    """
    digest = hashlib.sha256(str(series).encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(sa.select(sa.func.pg_advisory_lock(key)))
            try:
                yield
            finally:
                connection.execute(sa.select(sa.func.pg_advisory_unlock(key)))
                connection.commit()
        return

    database_path = engine.url.database
    if not database_path or database_path == ":memory:":
        yield
        return
    lock_path = Path(f"{database_path}.{digest[:6].hex()}.lock")
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
