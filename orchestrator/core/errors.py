"""The one exception type users see as a one-line message instead of a traceback.

Everything that is the user's to fix (a config key, a missing file, an infeasible budget, a profile
that cannot be read) raises :class:`StudyError`; the CLI prints ``error: <message>`` and exits 2.
Anything else is a bug in rankstudy and keeps its traceback.
"""


class StudyError(Exception):
    """A problem with the user's input, reported as one line that says what to change."""


class ConfigError(StudyError):
    """A study config value is missing, unknown, of the wrong type or impossible."""


class OutputSpaceError(StudyError):
    """The study's output directory ran out of space: not retried (it would fail the same way), kept results
    stay as they are, and the same command resumes once space is freed."""


class RunStopped(Exception):  # noqa: N818 - not an error: the run was told to stop and did so cleanly
    """A run told to stop (SIGTERM: a pod being evicted, ``ray stop``) that saved a checkpoint at a step boundary
    and recorded why; the scheduler resumes it from that checkpoint without using its failure budget."""
