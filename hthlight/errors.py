"""Errors a user can act on. The CLI prints these as one line and exits non-zero."""


class HthlightError(Exception):
    """Base class for errors caused by configuration or input, not by a bug."""


class ConfigError(HthlightError, ValueError):
    """A configuration value is invalid; the message says what is allowed."""


class DataError(HthlightError):
    """Input data is missing or unreadable (strict mode) or no usable sample remains."""
