"""Alembic migrations run from Python: upgrade before writes, check before reads."""

import logging
from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from btc_lstm.errors import DatabaseError

logger = logging.getLogger(__name__)


def alembic_config() -> Config:
    """Return an Alembic config for the migrations shipped with the package."""
    config = Config()
    script_location = resources.files("btc_lstm.migrations")
    config.set_main_option("script_location", str(script_location))
    return config


def head_revision() -> str:
    """Return the newest revision of the shipped migrations."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise DatabaseError("no migrations found in btc_lstm.migrations")
    return head


def current_revision(engine: Engine) -> str | None:
    """Return the database's Alembic revision, or None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade_database(engine: Engine, revision: str = "head") -> None:
    """Apply the migrations up to `revision` in one transaction."""
    before = current_revision(engine)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    after = current_revision(engine)
    if after != before:
        logger.info("database schema upgraded from %s to %s", before or "empty", after)


def downgrade_database(engine: Engine, revision: str) -> None:
    """Revert the migrations down to `revision` ("base" removes every table)."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def require_current_schema(engine: Engine) -> None:
    """Check that the database is at the newest revision before reading from it.

    Raises:
        DatabaseError: the database is empty or at an older revision.
    """
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        found = "has no btc-lstm tables"
    else:
        found = f"is at revision {current}, expected {head}"
    raise DatabaseError(f"the database {found}; run `btc-lstm db upgrade` first")
