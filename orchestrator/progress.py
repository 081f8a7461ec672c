"""What the driver knows of each run while the grid runs, and the one progress line it prints from that."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.core.attempts import Budget
from orchestrator.core.heartbeat import format_duration, format_eta, run_remaining_s, study_remaining_s
from orchestrator.core.plan import RunSpec


@dataclass
class RunState:
    spec: RunSpec
    attempts: int = 0
    budget: Budget | None = None  # what its attempts have used of the two failure budgets
    node_id: str | None = None  # the node of the running attempt, once its actor answered
    status: str = "pending"  # pending | running | completed | failed
    error: str | None = None
    actor: object = None
    ref: object = None
    progress: dict = field(default_factory=dict)
    record: object = None  # what the runner returned (a RunRecord), once completed
    progress_ref: object = None  # an unanswered progress query


def progress_line(states: dict[str, RunState]) -> str:
    """The driver's one line: counts and the study's ETA, each running run's phase with its own, and how many wait
    for a slot (ETAs: orchestrator/core/heartbeat.py; the study's needs a completed run's duration).

    >>> specs = (RunSpec("uniform", 0), RunSpec("uniform", 1))
    >>> states = {spec.run_id: RunState(spec, status="running") for spec in specs}
    >>> states["uniform-seed0"].progress = {"phase": "train", "step": 3, "max_steps": 48, "s_per_step": 2.0}
    >>> progress_line(states)  # the queued run's duration is not known yet: no study ETA
    'runs: 0 done, 2 running, 0 pending | uniform-seed0 step 3/48 (eta 1m30s + evaluation), 1 queued'
    >>> states["uniform-seed1"].progress = {"phase": "eval", "eval_done": 256, "eval_total": 512, "s_per_item": 0.1}
    >>> progress_line(states)
    'runs: 0 done, 2 running, 0 pending, eta 1m30s | uniform-seed0 step 3/48 (eta 1m30s + evaluation), uniform-seed1 eval 256/512 (eta 26s)'
    """
    counts = {k: sum(s.status == k for s in states.values()) for k in ("completed", "running", "pending", "failed")}
    running = [s for s in states.values() if s.status == "running"]
    eval_s, run_s = typical_durations([s.record for s in states.values() if s.record is not None])
    # Runs still waiting for a slot are counted, not listed: with a large grid they would drown the line.
    parts = [f"{s.spec.run_id} {describe(s.progress, eval_s)}" for s in running if s.progress]
    waiting = sum(not s.progress for s in running)
    parts += [f"{waiting} queued"] if waiting else []
    started = [run_remaining_s(s.progress, eval_s) for s in running if s.progress]
    eta = study_remaining_s(started, waiting + counts["pending"], run_s)
    head = (f"runs: {counts['completed']} done, {counts['running']} running, {counts['pending']} pending"
            + (f", {counts['failed']} failed" if counts["failed"] else "")
            + (f", eta {format_duration(eta)}" if eta is not None and (running or counts["pending"]) else ""))
    return head + (" | " + ", ".join(parts) if parts else "")


def typical_durations(records: list) -> tuple[float | None, float | None]:
    """Median evaluation time and median whole-run time (run.json ``timings``) of completed trained runs."""
    trained = [r.timings for r in records if getattr(r, "status", None) == "completed" and r.timings
               and r.timings.get("train_s")]
    return (_median([t.get("eval_s") for t in trained]), _median([t.get("total_s") for t in trained]))


def _median(values) -> float | None:
    finite = sorted(v for v in values if isinstance(v, (int, float)))
    return finite[len(finite) // 2] if finite else None


def describe(progress: dict, eval_s: float | None = None) -> str:
    if not progress:
        return "queued"  # the actor has not answered yet: waiting for resources, or starting its process
    eta = format_eta(progress, eval_s)
    suffix = f" (eta {eta})" if eta is not None else ""
    if progress.get("phase") == "eval":
        return f"eval {progress.get('eval_done', 0)}/{progress.get('eval_total', '?')}{suffix}"
    if "step" in progress:
        return f"step {progress['step']}/{progress.get('max_steps', '?')}{suffix}"
    return "setting up"
