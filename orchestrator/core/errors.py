"""The one exception type users see as a one-line message instead of a traceback.

Everything that is the user's to fix (a config key, a missing file, an infeasible budget, a profile
that cannot be read) raises :class:`StudyError`; the CLI prints ``error: <message>`` and exits 2.
Anything else is a bug in rankstudy and keeps its traceback.
"""


class StudyError(Exception):
    """A problem with the user's input, reported as one line that says what to change."""


class ConfigError(StudyError):
    """A study config value is missing, unknown, of the wrong type or impossible."""
