"""``rankstudy status DIR [--json]``: where each run of a study stands, read from the study directory alone.

Works from any machine that sees DIR (or its object-storage URI), while the study runs and after, with no Ray
and no config: the runs come
from DIR/plan.json (written by the driver at start; without it, the run directories found), each run's state from
its run.json and its heartbeat, DIR/runs/<run_id>/progress.json (orchestrator/core/heartbeat.py):

- ``completed``: run.json says so and its tables exist;
- ``failed``: run.json says so, with its one-line error (the driver may still retry it);
- ``running``: an attempt whose heartbeat is fresh, with its phase, step and ETA;
- ``stale``: run.json says running but the heartbeat is older than ``--stale-after`` (its process or node is
  gone, or the driver was stopped); re-running the study resumes it;
- ``waiting``: not started, and the run it allocates from has not completed;
- ``not started``.

The total line gives the study's ETA (:func:`orchestrator.core.heartbeat.study_remaining_s`, from the running
runs' paces and the completed runs' durations) and whether a driver holds the directory. Exit status 0 when
every run completed, 1 otherwise.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.core import attempts as attempt_log
from orchestrator.core.contract import COMPLETED, FAILED, RUNNING, TABLES, StudyPaths
from orchestrator.core.errors import StudyError
from orchestrator.core.heartbeat import (
    STALE_AFTER_S,
    format_duration,
    format_eta,
    run_remaining_s,
    study_remaining_s,
)
from orchestrator.core.storage import BULK
from orchestrator.progress import typical_durations

STALE, WAITING, NOT_STARTED = "stale", "waiting", "not started"


@dataclass
class RunStatus:
    run_id: str
    state: str  # completed | running | stale | failed | waiting | not started
    phase: str | None = None  # setup | train | eval (running, stale)
    step: int | None = None
    max_steps: int | None = None
    eval_done: int | None = None
    eval_total: int | None = None
    eta_s: float | None = None  # running: seconds to its end (see eta)
    eta: str | None = None  # the same in words; "+ evaluation" while no evaluation of the study has been timed
    node: str | None = None  # host (node ip) of its latest attempt
    attempts: int = 0
    wall_s: float | None = None  # summed over its attempts (running: up to now)
    error: str | None = None
    heartbeat_age_s: float | None = None
    depends_on: str | None = None


@dataclass
class StudyStatus:
    study_dir: str
    runs: list[RunStatus]
    eta_s: float | None
    driver: str | None  # "host H, pid P, ..." of the driver holding DIR, or None

    @property
    def complete(self) -> bool:
        return bool(self.runs) and all(r.state == COMPLETED for r in self.runs)

    def to_json(self) -> str:
        counts = {state: sum(r.state == state for r in self.runs) for state in
                  (COMPLETED, RUNNING, STALE, FAILED, WAITING, NOT_STARTED)}
        return json.dumps({"study_dir": self.study_dir, "complete": self.complete, "eta_s": self.eta_s,
                           "driver": self.driver, "counts": counts, "runs": [asdict(r) for r in self.runs]}, indent=1)


def study_status(study_dir: str | Path, now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> StudyStatus:
    """Every run's :class:`RunStatus` and the study's ETA, from DIR's files only."""
    paths = StudyPaths(study_dir)
    if paths.remote is not None:  # object storage: the small files only (tables are checked where they are)
        paths.remote.pull_study(skip=(*BULK, *TABLES, "report", "tracking"))
    if not paths.root.is_dir():
        raise StudyError(f"{paths.root} is not a directory")
    now = time.time() if now is None else now
    staged = StudyPaths(paths.root)  # what was just pulled (the same directory for a local study): read once
    planned = _planned_runs(staged)
    if not planned:
        raise StudyError(f"{paths.location} holds no study: no plan.json and no runs/<run_id>/run.json")
    records = {run_id: staged.read_record(run_id) for run_id in planned}
    eval_s, run_s = typical_durations([r for r in records.values() if r is not None])
    runs = [_run_status(paths, run_id, depends_on, records[run_id], records, now, stale_after_s, eval_s)
            for run_id, depends_on in planned.items()]
    running = [r.eta_s for r in runs if r.state == RUNNING]
    left = sum(r.state in (WAITING, NOT_STARTED, STALE, FAILED) for r in runs)
    eta = study_remaining_s(running, left, run_s) if running or left else 0.0
    return StudyStatus(paths.location, runs, eta, _driver(paths, now))


def _planned_runs(paths: StudyPaths) -> dict[str, str | None]:
    """run_id -> depends_on, from plan.json (the latest invocation's grid) plus any other run directory."""
    planned: dict[str, str | None] = {}
    try:
        for spec in json.loads(paths.plan.read_text()):
            planned[str(spec["run_id"])] = spec.get("depends_on")
    except (OSError, ValueError, TypeError, KeyError):
        pass
    if paths.runs_dir.is_dir():
        for run_dir in sorted(paths.runs_dir.iterdir()):
            if (run_dir / "run.json").exists() and run_dir.name not in planned:
                record = paths.read_record(run_dir.name)
                planned[run_dir.name] = (record.spec or {}).get("depends_on") if record is not None else None
    return planned


def _run_status(paths: StudyPaths, run_id: str, depends_on: str | None, record, records: dict, now: float,
                stale_after_s: float, eval_s: float | None) -> RunStatus:
    status = RunStatus(run_id, NOT_STARTED, depends_on=depends_on)
    if record is None:
        dependency = records.get(depends_on) if depends_on else None
        if depends_on and not (dependency is not None and paths.is_complete(depends_on, dependency)):
            status.state = WAITING
        return status
    log = record.attempts or []
    status.attempts = len(log) or record.attempt
    status.node = _node(log[-1]) if log else record.host
    status.wall_s = _wall_s(log, now)
    if record.status == COMPLETED and paths.is_complete(run_id, record):
        status.state = COMPLETED
        return status
    if record.status == FAILED:
        status.state, status.error = FAILED, record.error
        return status
    progress = _read_json(paths.progress(run_id))
    if progress.get("attempt") not in (None, record.attempt):
        progress = {}  # an earlier attempt's heartbeat: this attempt has not written one yet
    beat = progress.get("heartbeat", progress.get("time"))
    if not isinstance(beat, (int, float)):
        beat = attempt_log.unix_time(log[-1].get("started_at")) if log else None
    status.heartbeat_age_s = now - beat if beat is not None else None
    for key in ("phase", "step", "max_steps", "eval_done", "eval_total"):
        setattr(status, key, progress.get(key))
    ended = log[-1].get("ended") if log else None
    if record.status == RUNNING and not ended and status.heartbeat_age_s is not None \
            and status.heartbeat_age_s <= stale_after_s:
        status.state, status.eta_s = RUNNING, run_remaining_s(progress, eval_s)
        status.eta = format_eta(progress, eval_s)
    else:
        status.state = STALE
        status.error = ended  # e.g. "stopped: SIGTERM at step 4; ..." (None: the process vanished)
    return status


def _node(attempt: dict) -> str | None:
    host, ip = attempt.get("host"), attempt.get("node_ip")
    return f"{host} ({ip})" if host and ip else host or ip


def _wall_s(log: list[dict], now: float) -> float | None:
    total, any_known = 0.0, False
    for attempt in log:
        start = attempt_log.unix_time(attempt.get("started_at"))
        end = attempt_log.unix_time(attempt.get("ended_at")) if attempt.get("ended_at") else now
        if start is not None and end is not None:
            total, any_known = total + max(0.0, end - start), True
    return total if any_known else None


def _driver(paths: StudyPaths, now: float) -> str | None:
    from orchestrator.lease import LEASE_NAME, lease_ttl_s, read_lease

    held = read_lease(paths.root / LEASE_NAME)
    return held.describe(now) if held is not None and now - held.heartbeat < lease_ttl_s() else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def format_status(status: StudyStatus) -> str:
    """One line per run, then the total line."""
    width = max(len(r.run_id) for r in status.runs)
    lines = [f"{r.run_id:<{width}}  {_describe(r)}" for r in status.runs]
    counts = {}
    for r in status.runs:
        counts[r.state] = counts.get(r.state, 0) + 1
    listed = ", ".join(f"{n} {state}" for state, n in counts.items())
    eta = ("complete" if status.complete else f"eta {format_duration(status.eta_s)}" if status.eta_s is not None
           else "eta unknown (no completed run to time the rest by)")
    driver = f"driver: {status.driver}" if status.driver else "no driver holds the directory"
    lines.append(f"{len(status.runs)} runs: {listed}; {eta}; {driver}")
    return "\n".join(lines)


def _describe(r: RunStatus) -> str:
    where = (f"; node {r.node}" if r.node else "") + (f"; attempts {r.attempts}" if r.attempts else "") \
        + (f"; wall {format_duration(r.wall_s)}" if r.wall_s is not None else "")
    if r.state == RUNNING:
        doing = (f"eval {r.eval_done}/{r.eval_total}" if r.phase == "eval" else
                 f"step {r.step} of {r.max_steps}" if r.step is not None else r.phase or "setup")
        return f"running: {doing}, eta {r.eta or '?'}{where}"
    if r.state == STALE:
        at = f" at step {r.step} of {r.max_steps}" if r.step is not None else ""
        why = f" ({r.error})" if r.error else ""
        return (f"stale: no heartbeat for {format_duration(r.heartbeat_age_s)}{at}{why}; re-run the study to "
                f"resume it{where}")
    if r.state == FAILED:
        return f"failed: {r.error}{where}"
    if r.state == WAITING:
        return f"waiting for {r.depends_on}"
    return f"{r.state}{where}"
