"""Alembic environment: runs on the connection given by btc_lstm.migrate, or on the
URL from alembic.ini's sqlalchemy.url or BTC_LSTM_DATABASE_URL when Alembic's own CLI
is used."""

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from btc_lstm.store.connection import create_db_engine
from btc_lstm.store.schema import metadata

# Any fixed 64-bit number works; it only has to be the same for every process.
POSTGRES_MIGRATION_LOCK_ID = 7_305_112_905


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Two flows that start together both upgrade; the lock makes the second
            # wait and then find the schema already at head.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:lock_id)"),
                {"lock_id": POSTGRES_MIGRATION_LOCK_ID},
            )
        context.run_migrations()


def database_url() -> str:
    url = context.config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from btc_lstm.settings import load_settings

    return load_settings().database_url


if context.is_offline_mode():
    context.configure(url=database_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    given = context.config.attributes.get("connection")
    if given is not None:
        run_migrations(given)
    else:
        engine = create_db_engine(database_url())
        with engine.begin() as connection:
            run_migrations(connection)
        engine.dispose()
