"""Alembic migrations run from Python: upgrade before writes, check before reads."""

import logging
from collections.abc import Callable
from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
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
    """Apply the migrations up to `revision` in one transaction.

    Raises:
        DatabaseError: the revision is unknown or the upgrade failed.
    """
    before = current_revision(engine)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        _run_alembic(command.upgrade, config, revision)
    after = current_revision(engine)
    if after != before:
        logger.info("database schema upgraded from %s to %s", before or "empty", after)


def downgrade_database(engine: Engine, revision: str) -> None:
    """Revert the migrations down to `revision` ("base" removes every table).

    Raises:
        DatabaseError: the revision is unknown or the downgrade failed.
    """
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        _run_alembic(command.downgrade, config, revision)


def _run_alembic(
    alembic_command: Callable[[Config, str], None], config: Config, revision: str
) -> None:
    try:
        alembic_command(config, revision)
    except CommandError as exc:
        revisions = ", ".join(
            script.revision
            for script in ScriptDirectory.from_config(config).walk_revisions()
        )
        raise DatabaseError(
            f"migration to revision {revision!r} failed: {exc}; known revisions "
            f"are base, {revisions} and head"
        ) from exc


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
