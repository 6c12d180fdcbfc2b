"""Exceptions raised for bad input. The CLI turns each into one line on stderr and exit code 2."""


class LcssmError(Exception):
    """Base class of lcssm's input errors."""


class ConfigError(LcssmError, ValueError):
    """A bad configuration key, type or value."""


class DataError(LcssmError, ValueError):
    """Missing, malformed or unusable data."""


class CheckpointError(LcssmError):
    """A missing, corrupt or untrusted checkpoint."""


class ResourceError(LcssmError):
    """Out of memory; the message names the batch size and what to change. The CLI exits with code 2."""


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is the CPU allocator's or CUDA's out-of-memory error (or Python's MemoryError)."""
    if isinstance(e, MemoryError):
        return True
    oom = getattr(__import__("torch"), "OutOfMemoryError", ())
    if oom and isinstance(e, oom):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
