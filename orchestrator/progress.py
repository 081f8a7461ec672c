"""What the driver knows of each run while the grid runs, and the one progress line it prints from that."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.core.attempts import Budget
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
    """The driver's one line: counts, each running run's phase, and how many wait for a slot.

    >>> specs = (RunSpec("uniform", 0), RunSpec("uniform", 1))
    >>> states = {spec.run_id: RunState(spec, status="running") for spec in specs}
    >>> states["uniform-seed0"].progress = {"step": 3, "max_steps": 48}
    >>> progress_line(states)
    'runs: 0 done, 2 running, 0 pending | uniform-seed0 step 3/48, 1 queued'
    """
    counts = {k: sum(s.status == k for s in states.values()) for k in ("completed", "running", "pending", "failed")}
    running = [s for s in states.values() if s.status == "running"]
    # Runs still waiting for a slot are counted, not listed: with a large grid they would drown the line.
    parts = [f"{s.spec.run_id} {describe(s.progress)}" for s in running if s.progress]
    waiting = sum(not s.progress for s in running)
    parts += [f"{waiting} queued"] if waiting else []
    head = (f"runs: {counts['completed']} done, {counts['running']} running, {counts['pending']} pending"
            + (f", {counts['failed']} failed" if counts["failed"] else ""))
    return head + (" | " + ", ".join(parts) if parts else "")


def describe(progress: dict) -> str:
    if not progress:
        return "queued"  # the actor has not answered yet: waiting for resources, or starting its process
    if progress.get("phase") == "eval":
        return f"eval {progress.get('eval_done', 0)}/{progress.get('eval_total', '?')}"
    if "step" in progress:
        return f"step {progress['step']}/{progress.get('max_steps', '?')}"
    return "setting up"
