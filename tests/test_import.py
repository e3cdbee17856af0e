"""Storing candle files: rejected rows, counts, and all-or-nothing imports."""

import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

import btc_lstm.store
from btc_lstm.candles import Series, datetime_to_ms
from btc_lstm.errors import CsvFormatError
from btc_lstm.ingest import import_candle_file
from btc_lstm.store import count_candles, load_candles, load_rejected_candles
from tests.conftest import require_shared_file

FIXTURES = Path(__file__).parent / "data"
# A time long after every fixture's candles closed.
LATER_MS = datetime_to_ms(pd.Timestamp("2026-01-01", tz="UTC").to_pydatetime())


def copy_fixture(name: str, folder: Path) -> Path:
    return Path(shutil.copy(FIXTURES / name, folder / name))


class TestFixtureImports:
    @pytest.mark.parametrize(
        ("name", "series", "stored", "rejected_day", "reason"),
        [
            (
                "Binance_ETHUSDT_d.csv",
                Series("binance", "ETH/USDT", "1d"),
                4,
                "2025-02-22",
                "high below open, close or low",
            ),
            (
                "BTCUSDT-1d-2025-01.csv",
                Series("binance", "BTC/USDT", "1d"),
                4,
                "2025-01-04",
                "negative volume",
            ),
            (
                "BTC-USD.csv",
                Series("yahoo", "BTC/USD", "1d"),
                4,
                "2024-03-03",
                "missing or non-finite value",
            ),
        ],
    )
    def test_bad_row_is_rejected_with_reason(
        self, engine, name, series, stored, rejected_day, reason
    ):
        result = import_candle_file(engine, FIXTURES / name, now_ms=LATER_MS)
        rejects = load_rejected_candles(engine)

        assert (result.received, result.inserted, result.rejected) == (5, stored, 1)
        assert count_candles(engine, series) == stored
        assert len(rejects) == 1
        assert rejects["source"].iloc[0] == name
        assert rejects["reason"].iloc[0] == reason
        assert rejects["open_time"].iloc[0] == pd.Timestamp(rejected_day, tz="UTC")
        assert rejected_day not in set(
            load_candles(engine, series)["open_time"].dt.strftime("%Y-%m-%d")
        )

    def test_rejected_values_are_kept(self, engine):
        import_candle_file(engine, FIXTURES / "BTCUSDT-1d-2025-01.csv", now_ms=LATER_MS)

        reject = load_rejected_candles(engine).iloc[0]

        assert reject["open"] == 98174.17
        assert reject["close"] == 98220.5
        assert reject["volume"] == -8990.05651
        assert (reject["exchange"], reject["symbol"]) == ("binance", "BTC/USDT")

    def test_null_row_values_are_stored_as_missing(self, engine):
        import_candle_file(engine, FIXTURES / "BTC-USD.csv", now_ms=LATER_MS)

        reject = load_rejected_candles(engine).iloc[0]

        assert reject[["open", "high", "low", "close", "volume"]].isna().all()

    def test_plain_table_with_overrides(self, engine):
        result = import_candle_file(
            engine,
            FIXTURES / "candles.csv",
            exchange="kraken",
            symbol="BTC/USD",
            now_ms=LATER_MS,
        )

        assert (result.exchange, result.symbol) == ("kraken", "BTC/USD")
        assert (result.received, result.inserted, result.rejected) == (4, 3, 1)
        assert load_rejected_candles(engine)["reason"].iloc[0] == "price not positive"

    def test_rejects_are_logged_in_one_line(self, engine, caplog):
        with caplog.at_level(logging.WARNING, logger="btc_lstm"):
            import_candle_file(engine, FIXTURES / "BTC-USD.csv", now_ms=LATER_MS)

        assert (
            "yahoo BTC/USD 1d: rejected 1 candles from BTC-USD.csv, first at "
            "2024-03-03 00:00:00+00:00: missing or non-finite value"
        ) in caplog.text


class TestRepeatedImports:
    def test_reimport_updates_reject_in_place(self, engine, tmp_path):
        path = copy_fixture("Binance_ETHUSDT_d.csv", tmp_path)
        import_candle_file(engine, path, now_ms=LATER_MS)
        first = load_rejected_candles(engine)
        path.write_text(path.read_text().replace("2390.00,2380.00", "2390.00,2370.00"))

        result = import_candle_file(engine, path, now_ms=LATER_MS)
        second = load_rejected_candles(engine)

        assert (result.inserted, result.updated, result.rejected) == (0, 0, 1)
        assert len(second) == 1
        assert second["high"].iloc[0] == 2370.0
        assert second["rejected_at"].iloc[0] > first["rejected_at"].iloc[0]

    def test_corrected_row_replaces_its_reject(self, engine, tmp_path):
        path = copy_fixture("Binance_ETHUSDT_d.csv", tmp_path)
        import_candle_file(engine, path, now_ms=LATER_MS)
        path.write_text(path.read_text().replace("2390.00,2380.00", "2390.00,2410.00"))

        result = import_candle_file(engine, path, now_ms=LATER_MS)

        assert (result.inserted, result.rejected) == (1, 0)
        assert load_rejected_candles(engine).empty
        assert count_candles(engine, Series("binance", "ETH/USDT", "1d")) == 5

    def test_same_row_from_another_file_is_rejected_again(self, engine, tmp_path):
        import_candle_file(engine, FIXTURES / "Binance_ETHUSDT_d.csv", now_ms=LATER_MS)
        other = tmp_path / "export.csv"
        shutil.copy(FIXTURES / "Binance_ETHUSDT_d.csv", other)

        import_candle_file(engine, other, exchange="binance", now_ms=LATER_MS)

        rejects = load_rejected_candles(engine)
        assert list(rejects["source"]) == ["Binance_ETHUSDT_d.csv", "export.csv"]

    def test_load_rejects_of_one_series_and_source(self, engine):
        import_candle_file(engine, FIXTURES / "BTC-USD.csv", now_ms=LATER_MS)
        import_candle_file(engine, FIXTURES / "BTCUSDT-1d-2025-01.csv", now_ms=LATER_MS)

        yahoo = load_rejected_candles(engine, Series("yahoo", "BTC/USD", "1d"))
        by_source = load_rejected_candles(engine, source="BTCUSDT-1d-2025-01.csv")

        assert list(yahoo["source"]) == ["BTC-USD.csv"]
        assert list(by_source["symbol"]) == ["BTC/USDT"]


class TestUnclosedCandles:
    def test_candle_open_at_import_is_rejected(self, engine):
        # 2025-02-25 12:00 UTC: the candle of that day is still open.
        now_ms = datetime_to_ms(pd.Timestamp("2025-02-25 12:00", tz="UTC"))

        result = import_candle_file(
            engine, FIXTURES / "Binance_ETHUSDT_d.csv", now_ms=now_ms
        )

        rejects = load_rejected_candles(engine).set_index("open_time")
        assert (result.inserted, result.rejected) == (3, 2)
        reason = rejects.loc[pd.Timestamp("2025-02-25", tz="UTC"), "reason"]
        assert reason == "not closed at the ingest time"

    def test_candle_is_stored_once_closed(self, engine):
        path = FIXTURES / "Binance_ETHUSDT_d.csv"
        import_candle_file(
            engine, path, now_ms=datetime_to_ms(pd.Timestamp("2025-02-25 12:00"))
        )

        result = import_candle_file(engine, path, now_ms=LATER_MS)

        assert (result.inserted, result.rejected) == (1, 1)
        assert list(load_rejected_candles(engine)["open_time"].dt.day) == [22]

    def test_future_dates_are_rejected(self, engine, tmp_path):
        path = tmp_path / "candles.csv"
        path.write_text(
            "date,open,high,low,close,volume\n"
            "2024-01-01,10,11,9,10.5,100\n"
            "2024-01-02,10.5,12,10,11,120\n"
            "2024-01-03,10.5,12,10,11,120\n"
            "2099-01-02,10.5,12,10,11,120\n"
        )

        result = import_candle_file(engine, path, "binance", "BTC/USDT")

        assert (result.inserted, result.rejected) == (3, 1)
        reject = load_rejected_candles(engine).iloc[0]
        assert reject["open_time"] == pd.Timestamp("2099-01-02", tz="UTC")
        assert reject["reason"] == "not closed at the ingest time"


class TestAllOrNothing:
    def test_file_error_keeps_stored_rows(self, engine, tmp_path):
        path = copy_fixture("Binance_ETHUSDT_d.csv", tmp_path)
        import_candle_file(engine, path, now_ms=LATER_MS)
        path.write_text(path.read_text().replace("1740268800000,", "yesterday,"))

        with pytest.raises(CsvFormatError, match="rows with an invalid time"):
            import_candle_file(engine, path, now_ms=LATER_MS)

        assert count_candles(engine, Series("binance", "ETH/USDT", "1d")) == 4
        assert len(load_rejected_candles(engine)) == 1

    def test_mixed_timeframe_stores_nothing(self, engine, tmp_path):
        path = tmp_path / "candles.csv"
        path.write_text(
            "timestamp,open,high,low,close,volume\n"
            "2024-01-01T00:00:00Z,10,11,9,10.5,100\n"
            "2024-01-02T00:00:00Z,10.5,12,10,11,120\n"
            "2024-01-02T04:00:00Z,10.5,12,10,11,120\n"
            "2024-01-03T00:00:00Z,-1,12,10,11,120\n"
            "2024-01-04T00:00:00Z,10.5,12,10,11,120\n"
        )

        with pytest.raises(CsvFormatError, match="mixes timeframes"):
            import_candle_file(engine, path, "binance", "BTC/USDT")

        assert count_candles(engine, Series("binance", "BTC/USDT", "1d")) == 0
        assert load_rejected_candles(engine).empty

    def test_failure_while_writing_leaves_nothing(self, engine, monkeypatch):
        def fail_after_candles(*_arguments):
            raise RuntimeError("connection lost")

        # The candles are upserted first, then the rejects fail in the same
        # transaction, so the candle rows must be rolled back.
        monkeypatch.setattr(
            btc_lstm.store, "upsert_rejected_candles", fail_after_candles
        )

        with pytest.raises(RuntimeError, match="connection lost"):
            import_candle_file(engine, FIXTURES / "BTC-USD.csv", now_ms=LATER_MS)

        assert count_candles(engine, Series("yahoo", "BTC/USD", "1d")) == 0
        assert load_rejected_candles(engine).empty


SHARED_FILES = {
    "Binance_BTCUSDT_d.csv": ("BTC/USDT", 2769),
    "Binance_ETHUSDT_d.csv": ("ETH/USDT", 2769),
    "Binance_LTCUSDT_d.csv": ("LTC/USDT", 2651),
    "Binance_XRPUSDT_d.csv": ("XRP/USDT", 2509),
}


class TestSharedFiles:
    @pytest.mark.parametrize("name", sorted(SHARED_FILES))
    def test_every_row_is_stored(self, engine, name):
        symbol, rows = SHARED_FILES[name]

        result = import_candle_file(engine, require_shared_file(name))

        assert result.symbol == symbol
        assert (result.received, result.inserted, result.rejected) == (rows, rows, 0)
        assert count_candles(engine, Series("binance", symbol, "1d")) == rows

    def test_second_import_changes_nothing(self, engine, btc_csv):
        import_candle_file(engine, btc_csv)

        result = import_candle_file(engine, btc_csv)

        assert (result.received, result.inserted, result.updated) == (2769, 0, 0)
        assert load_rejected_candles(engine).empty

    def test_broken_row_of_shared_file(self, engine, btc_csv, tmp_path):
        lines = btc_csv.read_text().splitlines()
        # lines[0] is the header and lines[1] the newest day, 2025-03-16.
        lines[2] = lines[2].replace("BTCUSDT,", "BTCUSDT,-", 1)
        broken = tmp_path / btc_csv.name
        broken.write_text("\n".join(lines) + "\n")

        result = import_candle_file(engine, broken)

        rejects = load_rejected_candles(engine)
        assert (result.received, result.inserted, result.rejected) == (2769, 2768, 1)
        assert rejects["open_time"].iloc[0] == pd.Timestamp("2025-03-15", tz="UTC")
        assert rejects["reason"].iloc[0] == "price not positive"
