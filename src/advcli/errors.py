"""The one exception family of advcli. Every message says what to do next.

The CLI maps these to one red line on stderr: `AdvcliError` -> exit 1, `UsageError` -> exit 2.
"""

from __future__ import annotations


class AdvcliError(Exception):
    """A handled failure: the message is shown as one line, exit code 1."""

    exit_code = 1


class UsageError(AdvcliError):
    """Bad command-line input (option value, unknown choice, bad config key): exit code 2."""

    exit_code = 2


class DataError(AdvcliError):
    """A dataset is missing, unreadable or inconsistent."""


class CheckpointError(AdvcliError):
    """A checkpoint is missing, corrupt, truncated or of a foreign format."""


class ResultsError(AdvcliError):
    """A result file is missing, malformed or of the wrong schema."""


class ConfigError(UsageError):
    """A --config file is unreadable, not a mapping, or has unknown keys."""


class TrainingDiverged(AdvcliError):
    """The training loss became NaN or infinite: training stopped, the last good state kept."""
