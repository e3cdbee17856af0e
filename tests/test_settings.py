import datetime as dt

import pytest

from btc_lstm.candles import (
    Series,
    last_closed_open_ms,
    schedule_cron,
    timeframe_to_ms,
)
from btc_lstm.errors import ConfigError
from btc_lstm.settings import load_settings

DAY_MS = 86_400_000


class TestLoadSettings:
    def test_defaults_describe_daily_btc_on_binance(self):
        settings = load_settings()

        assert settings.exchange == "binance"
        assert settings.symbols == ["BTC/USDT"]
        assert settings.timeframe == "1d"
        assert settings.window_candles == 730
        assert settings.horizon_candles == 7
        assert settings.database_url == "sqlite:///btc_lstm.db"

    def test_environment_variables_are_read(self, monkeypatch):
        monkeypatch.setenv("BTC_LSTM_SYMBOLS", "BTC/USDT, ETH/USDT")
        monkeypatch.setenv("BTC_LSTM_EPOCHS", "3")
        monkeypatch.setenv("BTC_LSTM_HISTORY_START", "2020-01-01")
        monkeypatch.setenv("BTC_LSTM_CCXT_CONFIG", '{"timeout": 5000}')

        settings = load_settings()

        assert settings.symbols == ["BTC/USDT", "ETH/USDT"]
        assert settings.epochs == 3
        assert settings.history_start == dt.date(2020, 1, 1)
        assert settings.ccxt_config == {"timeout": 5000}

    def test_overrides_beat_environment(self, monkeypatch):
        monkeypatch.setenv("BTC_LSTM_EPOCHS", "3")

        assert load_settings(epochs=9).epochs == 9
        assert load_settings(epochs=None).epochs == 3

    def test_invalid_number_names_variable(self, monkeypatch):
        monkeypatch.setenv("BTC_LSTM_EPOCHS", "many")

        with pytest.raises(ConfigError, match="BTC_LSTM_EPOCHS"):
            load_settings()

    def test_invalid_ccxt_config_json_is_rejected(self, monkeypatch):
        monkeypatch.setenv("BTC_LSTM_CCXT_CONFIG", "{not json")

        with pytest.raises(ConfigError, match="ccxt_config"):
            load_settings()

    def test_symbol_without_quote_is_rejected(self):
        with pytest.raises(ConfigError, match="BASE/QUOTE"):
            load_settings(symbols=["BTCUSDT"])

    def test_window_shorter_than_samples_is_rejected(self):
        with pytest.raises(ConfigError, match="window_candles=40 is too short"):
            load_settings(window_candles=40, lookback_candles=30, horizon_candles=7)

    @pytest.mark.parametrize("validation_fraction", [0.2, 0.5, 0.9])
    def test_smallest_accepted_window_trains(self, validation_fraction):
        from btc_lstm.settings import minimum_window_candles
        from btc_lstm.train import split_sample_count

        window = minimum_window_candles(30, 7, validation_fraction)
        options = {
            "lookback_candles": 30,
            "horizon_candles": 7,
            "validation_fraction": validation_fraction,
        }

        load_settings(window_candles=window, **options)
        with pytest.raises(ConfigError, match="is too short"):
            load_settings(window_candles=window - 1, **options)
        # The split of the smallest window's samples leaves ten to train on.
        training_count, _ = split_sample_count(window - 37, validation_fraction, 7)
        assert training_count == 10

    def test_monthly_timeframe_is_rejected(self):
        with pytest.raises(ConfigError, match="invalid timeframe '1M'"):
            load_settings(timeframe="1M")


class TestTimeframes:
    @pytest.mark.parametrize(
        ("timeframe", "length_ms"),
        [("1m", 60_000), ("1h", 3_600_000), ("4h", 14_400_000), ("1d", DAY_MS)],
    )
    def test_timeframe_length(self, timeframe, length_ms):
        assert timeframe_to_ms(timeframe) == length_ms

    @pytest.mark.parametrize(
        "timeframe", ["", "d", "0d", "1w", "1M", "1.5h", "3d", "25h", "１d"]
    )
    def test_unsupported_timeframe_raises(self, timeframe):
        with pytest.raises(ConfigError):
            timeframe_to_ms(timeframe)

    def test_todays_candle_is_not_closed(self):
        noon_ms = 20_000 * DAY_MS + DAY_MS // 2

        assert last_closed_open_ms(noon_ms, DAY_MS) == 19_999 * DAY_MS

    def test_candle_closes_exactly_at_midnight(self):
        midnight_ms = 20_000 * DAY_MS

        assert last_closed_open_ms(midnight_ms, DAY_MS) == 19_999 * DAY_MS


class TestScheduleCron:
    @pytest.mark.parametrize(
        ("timeframe", "cron"),
        [
            ("1d", "5 0 * * *"),
            ("12h", "5 */12 * * *"),
            ("4h", "5 */4 * * *"),
            ("1h", "5 * * * *"),
            ("15m", "1-59/15 * * * *"),
            ("1m", "* * * * *"),
        ],
    )
    def test_runs_after_candle_closes(self, timeframe, cron):
        assert schedule_cron(timeframe) == cron

    @pytest.mark.parametrize("timeframe", ["5h", "7m", "90m"])
    def test_uneven_timeframe_has_no_schedule(self, timeframe):
        with pytest.raises(ConfigError, match="no schedule for timeframe"):
            schedule_cron(timeframe)


class TestSeveralExchanges:
    def test_prefixed_symbol_names_its_exchange(self):
        settings = load_settings(symbols=["BTC/USDT", "kraken:BTC/USD"])

        assert settings.configured_series() == [
            Series("binance", "BTC/USDT", "1d"),
            Series("kraken", "BTC/USD", "1d"),
        ]

    def test_contract_symbol_keeps_its_settle_currency(self):
        settings = load_settings(symbols=["BTC/USDT:USDT", "bybit:ETH/USDT:USDT"])

        assert settings.configured_series() == [
            Series("binance", "BTC/USDT:USDT", "1d"),
            Series("bybit", "ETH/USDT:USDT", "1d"),
        ]

    def test_repeated_series_is_fetched_once(self):
        settings = load_settings(symbols=["BTC/USDT", "binance:BTC/USDT"])

        assert len(settings.configured_series()) == 1

    def test_environment_entries_are_split(self, monkeypatch):
        monkeypatch.setenv("BTC_LSTM_SYMBOLS", "BTC/USDT, kraken:BTC/USD")
        monkeypatch.setenv("BTC_LSTM_EXCHANGE", "bitstamp")

        settings = load_settings()

        assert [series.exchange for series in settings.configured_series()] == [
            "bitstamp",
            "kraken",
        ]

    def test_invalid_exchange_prefix_is_rejected(self):
        with pytest.raises(
            ConfigError, match="exchange 'Kraken', which is not a ccxt exchange id"
        ):
            load_settings(symbols=["Kraken:BTC/USD"])

    def test_ccxt_config_by_exchange(self, monkeypatch):
        monkeypatch.setenv("BTC_LSTM_CCXT_CONFIG", '{"timeout": 5000}')
        monkeypatch.setenv(
            "BTC_LSTM_CCXT_CONFIG_BY_EXCHANGE", '{"kraken": {"timeout": 9000}}'
        )

        settings = load_settings()

        assert settings.ccxt_config_for("binance") == {"timeout": 5000}
        assert settings.ccxt_config_for("kraken") == {"timeout": 9000}
        assert settings.ccxt_config_for("bitstamp") == {}

    def test_ccxt_config_by_exchange_needs_objects(self):
        with pytest.raises(ConfigError, match="ccxt_config_by_exchange"):
            load_settings(ccxt_config_by_exchange={"kraken": 5})


class TestAnchoredClosedRule:
    def test_candle_at_16_closes_at_16_next_day(self):
        anchor_ms = 16 * 3_600_000
        close_ms = 20_000 * DAY_MS + anchor_ms

        assert last_closed_open_ms(close_ms, DAY_MS, anchor_ms) == close_ms - DAY_MS
        assert last_closed_open_ms(close_ms - 1, DAY_MS, anchor_ms) == (
            close_ms - 2 * DAY_MS
        )

    def test_four_hour_candles(self):
        now_ms = 20_000 * DAY_MS + 5 * 3_600_000

        assert last_closed_open_ms(now_ms, 4 * 3_600_000) == 20_000 * DAY_MS
