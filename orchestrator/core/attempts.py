"""Attempts of a run: where each ran, when, and why it ended; what the scheduler hands one attempt.

A run may take several attempts: its actor's node is lost, its process is told to stop (SIGTERM), or it
crashes; each later attempt resumes from the latest complete checkpoint. run.json keeps one entry per attempt
(``RunRecord.attempts``), written by the attempt itself while it can (start, completion, failure, stop) and by
the scheduler when the attempt's process died without a word (node lost, SIGKILL).

Two budgets, as Ray Train keeps them apart (``max_failures`` / ``max_preemption_failures``): an *interruption*
(node lost, stop request) is the cluster's doing and counts against ``resources.max_interruptions``; a *crash*
(the run's own process died or raised) counts against ``resources.max_retries``.
"""

from __future__ import annotations

import errno
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core.errors import OutputSpaceError

# How an attempt ended: the first word of its ``ended`` field.
COMPLETED, FAILED, STOPPED, NODE_LOST, DIED = "completed", "failed", "stopped", "node-lost", "died"
INTERRUPTIONS = (STOPPED, NODE_LOST)  # the cluster's doing: they do not use the run's failure budget


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def unix_time(stamp: str | None) -> float | None:
    """The unix time of a :func:`now` stamp (None for None or a stamp it cannot read).

    >>> unix_time("2026-12-07T03:00:00+0000"), unix_time("yesterday")
    (1796612400.0, None)
    """
    from datetime import datetime

    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp() if stamp else None
    except (TypeError, ValueError):
        return None


@dataclass
class RunControl:
    """What the scheduler gives one attempt besides its spec: the node it runs on, and the stop request.

    ``stop`` is set (by the actor's SIGTERM handler) when the process is told to stop; the run then saves a
    checkpoint at the next step boundary and raises :class:`~orchestrator.core.errors.RunStopped`.
    """

    node_id: str | None = None
    node_ip: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    stop_reason: str | None = None  # e.g. "SIGTERM"
    stop_time: float | None = None  # time.monotonic() of the request, to measure the grace period used

    def request_stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.stop_reason, self.stop_time = reason, time.monotonic()
            self.stop.set()


def start_attempt(previous: list[dict[str, Any]], number: int, control: RunControl | None, host: str,
                  pid: int) -> list[dict[str, Any]]:
    """The attempts list with this attempt appended; an earlier attempt that never said how it ended is closed
    as ``died`` (its process vanished and nobody could tell why)."""
    attempts = [dict(a) for a in previous]
    for attempt in attempts:
        if attempt.get("ended") is None:
            attempt["ended"] = f"{DIED}: the process ended without a record of why"
    attempts.append({"attempt": number, "node_id": control.node_id if control else None,
                     "node_ip": control.node_ip if control else None, "host": host, "pid": pid,
                     "started_at": now(), "ended_at": None, "ended": None})
    return attempts


def end_attempt(attempts: list[dict[str, Any]], ended: str) -> bool:
    """Close the latest attempt with ``ended`` (``"<kind>: detail"``) unless it is closed already; True if closed."""
    if not attempts or attempts[-1].get("ended") is not None:
        return False
    attempts[-1]["ended"], attempts[-1]["ended_at"] = ended, now()
    return True


def ended_kind(ended: str | None) -> str | None:
    """The kind of an attempt's end, e.g. ``node-lost``.

    >>> ended_kind("node-lost: node 3f2a left the cluster")
    'node-lost'
    """
    return ended.split(":", 1)[0] if ended else None


def is_disk_full(err: BaseException) -> bool:
    """An exception that says the disk (or the user's quota) is full. torch.save reports a failed write as a
    RuntimeError ("file write failed") without the errno, so its message is looked at too.

    >>> is_disk_full(OSError(28, "No space left on device")), is_disk_full(RuntimeError("bad shape"))
    (True, False)
    """
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return isinstance(err, (OSError, RuntimeError)) and ("No space left on device" in text
                                                         or "file write failed" in text)


def disk_full_error(err: BaseException, output_dir: Path) -> OutputSpaceError:
    """One line naming the directory, what was being written and the space left there."""
    try:
        usage = shutil.disk_usage(output_dir)
        space = f"{usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB"
    except OSError:
        space = "space unknown"
    what = f" writing {err.filename}" if getattr(err, "filename", None) else ""
    return OutputSpaceError(f"no space left in the output directory {output_dir} ({space}){what}; results written "
                            "so far are kept: free space and re-run the same command to resume")


@dataclass
class Budget:
    """A run's two failure budgets and what it has used of them (``resources.max_retries`` / ``max_interruptions``)."""

    max_retries: int
    max_interruptions: int
    crashes: int = 0
    interruptions: int = 0

    def charge(self, ended: str, retryable: bool = True) -> tuple[bool, str]:
        """Count an attempt that ended with ``ended``; return whether the run goes on, and what it has used.

        >>> budget = Budget(max_retries=0, max_interruptions=1)
        >>> budget.charge("node-lost: node 3f2a left the cluster")
        (True, 'interruption 1/1')
        >>> budget.charge("died: the worker process died")
        (False, 'retry 1/0')
        """
        if ended_kind(ended) in INTERRUPTIONS:
            self.interruptions += 1
            return retryable and self.interruptions <= self.max_interruptions, \
                f"interruption {self.interruptions}/{self.max_interruptions}"
        self.crashes += 1
        return retryable and self.crashes <= self.max_retries, f"retry {self.crashes}/{self.max_retries}"
