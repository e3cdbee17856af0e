import datetime as dt
import socket

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from btc_lstm.candles import Series
from btc_lstm.errors import DatabaseError
from btc_lstm.migrate import (
    current_revision,
    downgrade_database,
    head_revision,
    require_current_schema,
    upgrade_database,
)
from btc_lstm.store import (
    insert_model_run,
    insert_predictions,
    latest_open_time,
    load_candles,
    upsert_candles,
)
from btc_lstm.store.connection import create_db_engine, mask_database_url
from btc_lstm.store.schema import metadata
from tests.conftest import make_candles

SERIES = Series("binance", "BTC/USDT", "1d")


def add_model_run(engine):
    return insert_model_run(
        engine,
        {
            "exchange": "binance",
            "symbol": "BTC/USDT",
            "timeframe": "1d",
            "created_at": dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
            "window_start_open_time": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            "window_end_open_time": dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
            "candle_count": 1,
            "hyperparameters": {},
            "preprocessing": {},
            "metrics": {},
            "epochs_trained": 1,
            "training_seconds": 0.1,
            "keras_version": "test",
            "model_archive": b"not a model",
        },
    )


class TestMigrations:
    def test_upgrade_then_downgrade_to_empty(self, database_url, open_engine):
        engine = open_engine(database_url)

        upgrade_database(engine)
        assert current_revision(engine) == head_revision()
        assert {"ohlcv", "model_runs", "predictions"} <= set(
            sa.inspect(engine).get_table_names()
        )

        downgrade_database(engine, "base")
        assert current_revision(engine) is None
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}

    def test_models_match_migrations(self, engine):
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True}
            )
            differences = compare_metadata(context, metadata)

        assert differences == []

    def test_upgrade_to_gating_keeps_stored_forecasts(self, database_url, open_engine):
        engine = open_engine(database_url)
        upgrade_database(engine, "0003")
        as_of = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
        with engine.begin() as connection:
            run_id = connection.execute(
                sa.text(
                    "INSERT INTO model_runs (exchange, symbol, timeframe, created_at, "
                    "window_start_open_time, window_end_open_time, candle_count, "
                    "hyperparameters, preprocessing, metrics, epochs_trained, "
                    "training_seconds, keras_version, model_archive) VALUES "
                    "('binance', 'BTC/USDT', '1d', :t, :t, :t, 1, '{}', '{}', '{}', "
                    "1, 0.1, 'x', :archive) RETURNING id"
                ),
                {"t": as_of, "archive": b"x"},
            ).scalar_one()
            connection.execute(
                sa.text(
                    "INSERT INTO predictions (exchange, symbol, timeframe, "
                    "as_of_open_time, target_open_time, horizon_step, "
                    "predicted_close, model_run_id, created_at) VALUES "
                    "('binance', 'BTC/USDT', '1d', :t, :t, 1, 42.0, :run, :t)"
                ),
                {"t": as_of, "run": run_id},
            )

        upgrade_database(engine)
        with engine.connect() as connection:
            row = connection.execute(
                sa.text("SELECT model, published, predicted_close FROM predictions")
            ).one()
            newest = connection.execute(
                sa.text("SELECT predicted_close FROM latest_predictions")
            ).scalar_one()

        assert (row.model, bool(row.published), row.predicted_close) == (
            "lstm",
            True,
            42.0,
        )
        assert newest == 42.0

    def test_downgrade_from_gating_keeps_model_forecasts(self, engine):
        run_id = add_model_run(engine)
        as_of = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
        rows = [
            {
                "exchange": "binance",
                "symbol": "BTC/USDT",
                "timeframe": "1d",
                "model": model,
                "model_run_id": model_run_id,
                "as_of_open_time": as_of,
                "target_open_time": as_of + dt.timedelta(days=1),
                "horizon_step": 1,
                "predicted_close": 42.0,
                "created_at": as_of,
            }
            for model, model_run_id in [("lstm", run_id), ("last_close", None)]
        ]
        insert_predictions(engine, rows)

        downgrade_database(engine, "0003")

        with engine.connect() as connection:
            remaining = connection.execute(
                sa.text("SELECT model_run_id FROM predictions")
            ).all()
            runs = connection.execute(sa.text("SELECT id FROM model_runs")).all()
        assert remaining == [(run_id,)]
        assert runs == [(run_id,)]

    def test_upgrade_twice_is_harmless(self, engine):
        upgrade_database(engine)

        assert current_revision(engine) == head_revision()

    def test_reading_empty_database_asks_for_upgrade(self, database_url, open_engine):
        engine = open_engine(database_url)

        with pytest.raises(DatabaseError, match="run `btc-lstm db upgrade`"):
            require_current_schema(engine)


class TestOpenDatabase:
    def test_missing_folder(self, tmp_path):
        url = f"sqlite:///{tmp_path / 'absent' / 'btc.db'}"

        with pytest.raises(DatabaseError, match="cannot open database"):
            create_db_engine(url)

    def test_unparseable_url(self):
        with pytest.raises(DatabaseError, match="invalid database URL"):
            create_db_engine("not a url")

    @pytest.mark.parametrize(
        "url",
        ["mysql://user:pw@127.0.0.1/db", "postgresql+asyncpg://user@127.0.0.1/db"],
    )
    def test_unsupported_driver(self, url):
        with pytest.raises(DatabaseError, match="sqlite:///PATH or postgresql://"):
            create_db_engine(url)

    def test_unknown_dialect(self):
        with pytest.raises(DatabaseError, match="cannot use database URL"):
            create_db_engine("nosuchdb://host/db")

    def test_refused_server_hides_password(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        url = f"postgresql://user:hunter2@127.0.0.1:{closed_port}/db"

        with pytest.raises(DatabaseError, match="cannot open database") as error:
            create_db_engine(url)

        assert "hunter2" not in str(error.value)
        assert "***" in str(error.value)

    def test_mask_database_url(self):
        masked = mask_database_url("postgresql://me:secret@db.internal/forecasts")

        assert masked == "postgresql://me:***@db.internal/forecasts"


class TestUpsertCandles:
    def test_insert_then_read_back_in_utc(self, engine):
        candles = make_candles(5)

        result = upsert_candles(engine, SERIES, candles)
        stored = load_candles(engine, SERIES)

        assert (result.inserted, result.updated, result.unchanged) == (5, 0, 0)
        assert list(stored["open_time"]) == list(candles["open_time"])
        assert str(stored["open_time"].dt.tz) == "UTC"
        assert stored["close"].tolist() == pytest.approx(candles["close"].tolist())

    def test_repeated_rows_are_unchanged(self, engine):
        candles = make_candles(5)
        upsert_candles(engine, SERIES, candles)

        result = upsert_candles(engine, SERIES, candles)

        assert (result.inserted, result.updated, result.unchanged) == (0, 0, 5)
        assert len(load_candles(engine, SERIES)) == 5

    def test_revised_candle_is_updated_in_place(self, engine):
        candles = make_candles(5)
        upsert_candles(engine, SERIES, candles)
        revised = candles.copy()
        revised.loc[4, "close"] = revised.loc[4, "close"] * 1.001
        revised.loc[4, "high"] = revised.loc[4, ["high", "close"]].max()

        result = upsert_candles(engine, SERIES, revised)
        stored = load_candles(engine, SERIES)

        assert (result.inserted, result.updated, result.unchanged) == (0, 1, 4)
        assert stored["close"].iloc[4] == pytest.approx(revised.loc[4, "close"])

    def test_series_are_kept_apart(self, engine):
        other = Series("binance", "ETH/USDT", "1d")
        upsert_candles(engine, SERIES, make_candles(5))
        upsert_candles(engine, other, make_candles(3, seed=1))

        assert len(load_candles(engine, SERIES)) == 5
        assert len(load_candles(engine, other)) == 3

    def test_load_newest_candles_oldest_first(self, engine):
        upsert_candles(engine, SERIES, make_candles(10))

        newest = load_candles(engine, SERIES, limit=3)

        assert newest["open_time"].is_monotonic_increasing
        assert newest["open_time"].iloc[-1] == pd.Timestamp("2022-01-10", tz="UTC")

    def test_latest_open_time(self, engine):
        assert latest_open_time(engine, SERIES) is None

        upsert_candles(engine, SERIES, make_candles(10))

        assert latest_open_time(engine, SERIES) == dt.datetime(
            2022, 1, 10, tzinfo=dt.UTC
        )
