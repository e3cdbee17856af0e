"""Settings of the daily job, read from BTC_LSTM_* environment variables.

CLI flags and flow parameters override the environment through `load_settings`.
Lengths are counted in candles of the configured timeframe, so `window_candles=730`
means two years of daily candles or 122 days of 4h candles.
"""

import datetime as dt
import difflib
import os
import re
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    SettingsConfigDict,
    SettingsError,
)

from btc_lstm.candles import Series, is_unified_symbol, timeframe_to_ms
from btc_lstm.errors import ConfigError

ENV_PREFIX = "BTC_LSTM_"


class Settings(BaseSettings):
    """Configuration of one deployment: candle source, store and model."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        allow_inf_nan=False,
    )

    database_url: str = Field(
        "sqlite:///btc_lstm.db",
        description="SQLAlchemy URL of the store; a relative SQLite path is relative "
        "to the working directory.",
    )
    exchange: str = Field(
        "binance", min_length=1, max_length=64, description="ccxt exchange id."
    )
    symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["BTC/USDT"],
        description="Unified ccxt symbols, on `exchange` unless written as "
        "EXCHANGE:SYMBOL (such as kraken:BTC/USD); comma-separated in the "
        "environment.",
    )
    timeframe: str = Field("1d", description="Candle length, as ccxt names it.")
    history_start: dt.date = Field(
        dt.date(2017, 1, 1),
        description="UTC day the first backfill starts from.",
    )
    window_candles: int = Field(
        730, ge=2, le=1_000_000, description="Candles in the rolling training window."
    )
    lookback_candles: int = Field(
        30, ge=1, le=10_000, description="Candles the model reads to make one forecast."
    )
    horizon_candles: int = Field(
        7, ge=1, le=1_000, description="Candles ahead that each forecast covers."
    )
    epochs: int = Field(50, ge=1, le=100_000, description="Maximum training epochs.")
    batch_size: int = Field(32, ge=1, le=1_000_000)
    lstm_units: int = Field(32, ge=1, le=4_096)
    lstm_layers: int = Field(
        1, ge=1, le=8, description="Stacked LSTM layers; each passes its sequence on."
    )
    bidirectional: bool = Field(
        False, description="Read each lookback forwards and backwards."
    )
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0)
    validation_fraction: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="Share of the newest training samples held out for validation.",
    )
    early_stopping_patience: int = Field(
        5, ge=1, description="Epochs without validation improvement before stopping."
    )
    # NumPy and TensorFlow take 32-bit unsigned seeds.
    random_seed: int = Field(42, ge=0, le=2**32 - 1)
    retrain_every_candles: int = Field(
        7,
        ge=1,
        le=100_000,
        description="Candles between retrains in a backtest; the daily job retrains "
        "whenever a new candle closed.",
    )
    # Chosen on the year before the one the README reports (bench/tune_gating.py):
    # without a margin, the published forecast was worse than last close at step 7.
    promotion_margin: float = Field(
        0.01,
        ge=0.0,
        lt=1.0,
        description="Share by which a retrained LSTM's validation MAE must beat last "
        "close's and the published model's to be published, such as 0.01.",
    )
    live_error_candles: int = Field(
        30,
        ge=1,
        le=100_000,
        description="Newest scored forecasts whose step-1 error can demote the "
        "published LSTM when it is worse than last close's.",
    )
    ccxt_config: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON object passed to the ccxt exchange constructor "
        "(timeouts, options, proxies, or urls of a mirror).",
    )
    ccxt_config_by_exchange: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="JSON object of ccxt configs by exchange id, such as "
        '{"kraken": {"timeout": 30000}}; an exchange listed here gets its own '
        "config instead of ccxt_config.",
    )
    # Prefect accepts at most 50 retry delays per task.
    fetch_retries: int = Field(
        3,
        ge=0,
        le=50,
        description="Retries of a symbol's fetch after a temporary error.",
    )
    fetch_retry_delay_seconds: float = Field(
        10.0,
        ge=0.0,
        le=3600.0,
        description="Delay before the first retry; each later retry waits 3x longer.",
    )

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("symbols")
    @classmethod
    def _check_symbols(cls, symbols: list[str]) -> list[str]:
        if not symbols:
            raise ValueError("at least one symbol is required, such as BTC/USDT")
        for entry in symbols:
            exchange, symbol = split_symbol_entry(entry)
            if exchange is not None and not _EXCHANGE_ID_PATTERN.match(exchange):
                raise ValueError(
                    f"{entry!r} names exchange {exchange!r}, which is not a ccxt "
                    "exchange id; write EXCHANGE:SYMBOL with a lowercase id, such as "
                    "kraken:BTC/USD"
                )
            if not is_unified_symbol(symbol):
                raise ValueError(
                    f"{entry!r} is not a unified ccxt symbol; write it as BASE/QUOTE, "
                    "such as BTC/USDT, or EXCHANGE:BASE/QUOTE, such as kraken:BTC/USD"
                )
        return symbols

    def configured_series(self) -> list[Series]:
        """Return one series per entry of `symbols`, in order, without repeats."""
        series_list: list[Series] = []
        for entry in self.symbols:
            exchange, symbol = split_symbol_entry(entry)
            series = Series(exchange or self.exchange, symbol, self.timeframe)
            if series not in series_list:
                series_list.append(series)
        return series_list

    def ccxt_config_for(self, exchange_id: str) -> dict[str, Any]:
        """Return the ccxt config of an exchange.

        An exchange listed in `ccxt_config_by_exchange` gets that config. The
        default `exchange` gets `ccxt_config`, and any other exchange none.
        """
        if exchange_id in self.ccxt_config_by_exchange:
            return self.ccxt_config_by_exchange[exchange_id]
        if exchange_id == self.exchange:
            return self.ccxt_config
        return {}

    @field_validator("timeframe")
    @classmethod
    def _check_timeframe(cls, timeframe: str) -> str:
        try:
            timeframe_to_ms(timeframe)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return timeframe

    @model_validator(mode="after")
    def _check_lengths(self) -> "Settings":
        minimum_window = minimum_window_candles(
            self.lookback_candles, self.horizon_candles, self.validation_fraction
        )
        if self.window_candles < minimum_window:
            raise ValueError(
                f"window_candles={self.window_candles} is too short for "
                f"lookback_candles={self.lookback_candles}, "
                f"horizon_candles={self.horizon_candles} and "
                f"validation_fraction={self.validation_fraction}; use at least "
                f"{minimum_window}"
            )
        return self


_EXCHANGE_ID_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$", re.ASCII)


def split_symbol_entry(entry: str) -> tuple[str | None, str]:
    """Split a `symbols` entry into its exchange id (None if not given) and symbol.

    The exchange comes before the first colon, but only when no slash precedes
    that colon, so that a contract symbol such as BTC/USDT:USDT stays whole.
    """
    prefix, colon, rest = entry.partition(":")
    if colon and "/" not in prefix:
        return prefix, rest
    return None, entry


# The split in btc_lstm.train needs at least this many samples on each side.
MINIMUM_TRAINING_SAMPLES = 10
MINIMUM_VALIDATION_SAMPLES = 2


def validation_sample_count(sample_count: int, validation_fraction: float) -> int:
    """Return how many of `sample_count` samples are held out for validation."""
    return max(MINIMUM_VALIDATION_SAMPLES, round(sample_count * validation_fraction))


def minimum_window_candles(
    lookback_candles: int, horizon_candles: int, validation_fraction: float = 0.2
) -> int:
    """Return the smallest window that leaves enough training and validation samples.

    A window of W candles gives W - lookback - horizon samples, because one
    sample needs `lookback_candles` returns (one candle more than that) plus
    `horizon_candles` future candles. The validation share is held out and the
    `horizon_candles` samples before it are dropped, so that no training target
    reaches into the validation period.
    """

    def enough(sample_count: int) -> bool:
        validation_count = validation_sample_count(sample_count, validation_fraction)
        training_count = sample_count - validation_count - horizon_candles
        return training_count >= MINIMUM_TRAINING_SAMPLES

    # The training count never falls as samples are added, so a binary search
    # finds the smallest sample count that is enough.
    low = MINIMUM_TRAINING_SAMPLES + horizon_candles + MINIMUM_VALIDATION_SAMPLES
    high = low
    while not enough(high):
        high *= 2
    while low < high:
        middle = (low + high) // 2
        if enough(middle):
            high = middle
        else:
            low = middle + 1
    sample_count = low
    return lookback_candles + horizon_candles + sample_count


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, with non-None overrides taking precedence.

    Raises:
        ConfigError: a value is invalid; the message names the setting and its
            environment variable.
    """
    _reject_unknown_variables()
    explicit = {name: value for name, value in overrides.items() if value is not None}
    try:
        return Settings(**explicit)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc)) from exc
    except SettingsError as exc:
        # Raised for JSON that does not parse, such as BTC_LSTM_CCXT_CONFIG={oops.
        match = re.search(r'field "(\w+)"', str(exc))
        name = match.group(1) if match else "settings"
        raise ConfigError(
            f"invalid setting {name} (env {ENV_PREFIX}{name.upper()}): not valid "
            'JSON; write a JSON object such as {"timeout": 30000}'
        ) from exc


# Read by the test suite, not by the settings.
_OTHER_VARIABLES = {f"{ENV_PREFIX}TEST_DATABASE_URL"}


def _reject_unknown_variables() -> None:
    """Reject a BTC_LSTM_* variable that names no setting, such as a misspelling."""
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    known |= _OTHER_VARIABLES
    for variable in sorted(os.environ):
        if variable.upper().startswith(ENV_PREFIX) and variable.upper() not in known:
            suggestion = difflib.get_close_matches(variable.upper(), known, n=1)
            hint = f"; did you mean {suggestion[0]}?" if suggestion else ""
            raise ConfigError(
                f"unknown setting {variable} in the environment{hint} Remove or "
                "rename it"
            )


def _describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"][:1]) or "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        if name == "settings":
            problems.append(message)
        else:
            source = f"a flag, a flow parameter or env {ENV_PREFIX}{name.upper()}"
            problems.append(f"{name} (from {source}): {message}")
    return "invalid setting " + "; ".join(problems)
