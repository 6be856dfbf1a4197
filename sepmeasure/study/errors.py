"""What can go wrong in a study, as exception and warning classes (one family, rooted at
:class:`StudyError`)."""
from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StudyError", "StudyRunError", "SchedulerUnreachableError", "StudyFolderBusyError", "StudyFolderError",
           "StudyTerminated", "CacheWarning"]


class StudyError(RuntimeError):
    """A study could not run or could not be summarised."""


class StudyRunError(StudyError):
    """Some configurations of a study failed (the others are cached)."""

    def __init__(self, message: str, failures: Sequence[tuple[dict, str]]) -> None:
        super().__init__(message)
        self.failures = list(failures)


class SchedulerUnreachableError(StudyError, ConnectionError):
    """The Dask scheduler address given could not be reached."""


class StudyFolderBusyError(StudyError):
    """Another run holds the study's output folder (its lock file names the process and host)."""


class StudyFolderError(StudyError, ValueError):
    """A study's output folder cannot be read as one run: a damaged ``study.json``, a table that is
    unreadable, or tables of two runs mixed."""


class StudyTerminated(BaseException):
    """The process received SIGTERM or SIGHUP while a pool ran; raised in the main thread so that
    the pool is shut down on the way out (like ``KeyboardInterrupt`` for SIGINT)."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


class CacheWarning(UserWarning):
    """A run file was moved aside (unreadable, of another format or version, edited, or not JSON) and
    its configuration is computed again."""
