"""User-facing errors.

Anything a user can mend (a path, a column, a flag) raises `TunelabError`; the
CLI prints its message as one line and exits non-zero, without a traceback.
"""


class TunelabError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2


class ConfigError(TunelabError, ValueError):
    """A configuration value is invalid; the message names the key and value."""


class DataError(TunelabError):
    """The dataset is missing, malformed or unusable."""


class ModelError(TunelabError):
    """The model cannot be found, loaded, or does not suit the task."""


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``1 example``, ``2 examples``: a count with its noun in the right number."""
    return f"{count:,} {singular if count == 1 else plural or singular + 's'}"
