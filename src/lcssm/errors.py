"""Exceptions raised for bad input. The CLI turns each into one line on stderr and exit code 2."""


class LcssmError(Exception):
    """Base class of lcssm's input errors."""


class ConfigError(LcssmError, ValueError):
    """A bad configuration key, type or value."""


class DataError(LcssmError, ValueError):
    """Missing, malformed or unusable data."""


class CheckpointError(LcssmError):
    """A missing, corrupt or untrusted checkpoint."""
