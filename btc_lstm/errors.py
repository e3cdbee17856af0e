"""Errors that the CLI prints as one line and the flows record as the failure reason.

Each message names what was wrong and what to do next. Temporary errors are the ones
worth retrying; everything else fails at once.
"""


class BtcLstmError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(BtcLstmError):
    """A setting, flag or flow parameter has an invalid value."""


class DatabaseError(BtcLstmError):
    """The database URL cannot be opened or its schema is not up to date."""


class ExchangeError(BtcLstmError):
    """The exchange rejected a request or does not offer what was requested."""


class UnknownExchangeError(ExchangeError):
    """The exchange id is not one that ccxt supports."""


class UnknownSymbolError(ExchangeError):
    """The symbol is not listed on the exchange."""


class ExchangeUnavailableError(ExchangeError):
    """The exchange could not be reached or asked us to slow down; worth a retry."""


class CsvFormatError(BtcLstmError):
    """A candle file is unreadable or has an invalid layout, time or timeframe."""


class InsufficientHistoryError(BtcLstmError):
    """Too few stored candles, or a gap among them, for the requested window."""


class ModelNotFoundError(BtcLstmError):
    """No trained model exists yet for the requested series."""


class TrainingError(BtcLstmError):
    """Training produced a model whose outputs are not finite numbers."""


class FanOutError(BtcLstmError):
    """Some of the per-symbol deployment runs of a fanned-out run did not complete."""


class ForecastError(BtcLstmError):
    """A stored model produced closes that are not finite and positive."""


class MixedAnchorError(ExchangeError):
    """Candles of one series open at different times of day, such as 00:00 and
    16:00 UTC for daily candles."""
