"""One driver per study directory: a lease file with a heartbeat, not an ``fcntl`` lock.

Two ``rankstudy run`` on one output directory would train the same runs into the same run directories and
checkpoints. ``fcntl``/``flock`` locks are unreliable on the shared filesystems a cluster's output lives on (NFS
without a lock daemon, object-store mounts), and a lock held by a lost node never goes away. So the driver holds
``DIR/.driver.lease`` instead: a small JSON record (host, pid, Ray job id, since when, last heartbeat) that it
rewrites every ``ttl / 4`` seconds while it runs and removes when it ends.

- A second driver that finds a lease whose heartbeat is younger than its time-to-live refuses with one line
  naming the holder (:class:`LeaseHeld`, exit status 2) before it writes anything.
- A lease whose heartbeat is older than that belongs to a driver that died (SIGKILL, a lost node): the next driver
  takes it over, saying so; so does a lease whose holder ran on this host and whose process is gone.
- Creating the lease is ``os.link`` of a fully written temporary file: atomic and exclusive on POSIX filesystems
  and on NFS alike, so of two drivers starting together exactly one gets it. Taking over a stale lease first
  renames it away (only one renamer can succeed), then links a new one.
- Readers (``rankstudy analyze``, ``plan``) never look at it.

The time-to-live is 60 s, or ``RANKSTUDY_LEASE_TTL_S`` (tests shorten it).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.core.errors import StudyError

LEASE_NAME = ".driver.lease"
TTL_ENV = "RANKSTUDY_LEASE_TTL_S"
DEFAULT_TTL_S = 60.0


class LeaseHeld(StudyError):
    """Another live driver holds the study directory."""


@dataclass(frozen=True)
class LeaseRecord:
    token: str
    host: str
    pid: int
    ray_job_id: str | None
    since: float  # unix time the holder took the lease
    heartbeat: float  # unix time of its last heartbeat

    def describe(self, now: float) -> str:
        since = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        job = f", Ray job {self.ray_job_id}" if self.ray_job_id else ""
        return f"host {self.host}, pid {self.pid}{job}, since {since}, last heartbeat {now - self.heartbeat:.0f} s ago"


def lease_ttl_s() -> float:
    raw = os.environ.get(TTL_ENV)
    try:
        ttl = float(raw) if raw else DEFAULT_TTL_S
    except ValueError:
        raise StudyError(f"{TTL_ENV}: must be a number of seconds, got {raw!r}") from None
    if not ttl > 0:
        raise StudyError(f"{TTL_ENV}: must be positive, got {raw!r}")
    return ttl


def read_lease(path: Path) -> LeaseRecord | None:
    """The lease at ``path``; None when there is none. A lease that cannot be parsed counts as stale (its writer
    never finishes a write: records are written whole and linked or renamed into place)."""
    try:
        return LeaseRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return LeaseRecord("unreadable", "?", 0, None, 0.0, 0.0)


class StudyLease:
    """The driver's hold on a study directory: ``acquire()`` or :class:`LeaseHeld`; ``release()`` at the end."""

    def __init__(self, study_dir: Path, echo=print, ttl_s: float | None = None, publish=None, withdraw=None):
        self.path = Path(study_dir) / LEASE_NAME
        self.echo = echo
        # A study in object storage (orchestrator/core/storage.py): the lease file is uploaded after each write and
        # deleted at release, so a driver elsewhere that pulls the study first sees it (best effort: two drivers
        # starting within one upload of each other can both proceed; a POSIX directory has no such window).
        self.publish, self.withdraw = publish or (lambda: None), withdraw or (lambda: None)
        self.ttl_s = ttl_s if ttl_s is not None else lease_ttl_s()
        now = time.time()
        self.record = LeaseRecord(uuid.uuid4().hex, socket.gethostname(), os.getpid(),
                                  os.environ.get("RAY_JOB_SUBMISSION_ID") or os.environ.get("RAY_JOB_ID"), now, now)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> StudyLease:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a lease may appear or vanish between our look and our link
            held = read_lease(self.path)
            now = time.time()
            if held is not None and now - held.heartbeat < self.ttl_s and not self._dead_here(held):
                raise LeaseHeld(f"{self.path.parent} is held by another rankstudy run ({held.describe(now)}); "
                                f"wait for it to end, or remove {self.path} if that driver is gone")
            if held is not None:
                stale = self.path.with_name(f"{LEASE_NAME}.stale-{self.record.token}")
                try:
                    os.rename(self.path, stale)  # exactly one of several drivers taking over gets here
                except FileNotFoundError:
                    continue
                stale.unlink(missing_ok=True)
                self.echo(f"taking over {self.path.parent} from a driver whose lease expired ({held.describe(now)})")
            if self._link_new():
                self._publish()
                self._thread = threading.Thread(target=self._beat, name="study-lease", daemon=True)
                self._thread.start()
                return self
        raise LeaseHeld(f"{self.path.parent}: another driver took the lease at the same time; try again")

    def _dead_here(self, held: LeaseRecord) -> bool:
        """A holder on this host whose process is gone (a driver killed here): no need to wait for its lease."""
        if held.host != self.record.host or held.pid <= 0:
            return False
        try:
            os.kill(held.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, someone else's
            return False
        return False

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = read_lease(self.path)
        if held is not None and held.token == self.record.token:
            self.path.unlink(missing_ok=True)
            try:
                self.withdraw()
            except OSError as err:
                self.echo(f"warning: could not remove the lease from the storage: {err}")

    def __enter__(self) -> StudyLease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _publish(self) -> None:
        try:
            self.publish()
        except OSError as err:  # the storage is unreachable for a moment: the next beat tries again
            self.echo(f"warning: could not upload the lease to the storage: {err}")

    def _write_temp(self) -> Path:
        temp = self.path.with_name(f"{LEASE_NAME}.{self.record.token}.tmp")
        with open(temp, "w") as f:
            json.dump(asdict(self.record), f)
            f.flush()
            os.fsync(f.fileno())
        return temp

    def _link_new(self) -> bool:
        temp = self._write_temp()
        try:
            os.link(temp, self.path)  # fails if a lease exists: atomic and exclusive, also on NFS
            return True
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            held = read_lease(self.path)
            if held is None or held.token != self.record.token:
                self.echo(f"warning: lost the lease on {self.path.parent} (another driver took it over)")
                return
            self.record = LeaseRecord(**{**asdict(self.record), "heartbeat": time.time()})
            try:
                os.replace(self._write_temp(), self.path)
                self._publish()
            except OSError as err:  # e.g. a full disk: the old lease stays whole; try again at the next beat
                self.path.with_name(f"{LEASE_NAME}.{self.record.token}.tmp").unlink(missing_ok=True)
                self.echo(f"warning: could not renew the lease on {self.path.parent}: {err.strerror or err}")
