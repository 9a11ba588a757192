"""Errors a user can cause; each message says what happened and what to do. The CLI prints them
without a traceback."""


class ISEPError(Exception):
    """Base of the errors `isep` reports to the user."""


class ConfigError(ISEPError, ValueError):
    """A configuration value is out of range or inconsistent."""


class DatasetError(ISEPError, ValueError):
    """A dataset cannot be resolved, fetched or read."""


class DivergenceError(ISEPError, RuntimeError):
    """Training produced a non-finite loss or value; the message names it, the step and λ."""


class CompareError(ISEPError, ValueError):
    """`isep compare` cannot produce its report (bad store, filter, metric, reference, --out)."""
