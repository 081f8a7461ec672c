"""DIR/runs/<run_id>/progress.json, a run's heartbeat: what it is doing, how fast, and that its process lives.

The running attempt rewrites it (atomically) on every progress report (a training step, a batch of evaluation
items) and at least every :data:`HEARTBEAT_S` seconds from a background thread, so a reader on any machine that
sees the directory (``rankstudy status``, a test, ``cat``) can tell a live run from one whose process or node
is gone: a heartbeat older than ``stale_after`` (default :data:`STALE_AFTER_S`) is stale, whatever run.json says.

```
phase        setup | train | eval
step, max_steps          the last finished optimizer step (train)
eval_done, eval_total    test items evaluated so far (eval)
s_per_step, s_per_item   the attempt's own pace: seconds per step since its first step, per item since eval began
attempt, pid, host       the attempt writing it
updated                  unix time of the last progress (a step, a batch)
heartbeat                unix time of the last write
```

:func:`remaining_s` turns a record into seconds left for the phase it is in; the driver's progress line and
``rankstudy status`` both use it. Pure, torch-free and Ray-free.
"""

from __future__ import annotations

import math

HEARTBEAT_S = 15.0  # the background rewrite period of a running attempt
STALE_AFTER_S = 120.0  # 8 missed heartbeats: the attempt's process (or its node) is taken for gone


def remaining_s(progress: dict) -> float | None:
    """Seconds left in the record's phase at its own pace (None when the pace is not known yet).

    >>> remaining_s({"phase": "train", "step": 10, "max_steps": 48, "s_per_step": 2.0})
    76.0
    >>> remaining_s({"phase": "eval", "eval_done": 64, "eval_total": 512, "s_per_item": 0.05})
    22.4
    >>> remaining_s({"phase": "setup"}) is None
    True
    """
    phase = progress.get("phase")
    if phase == "train" and _number(progress.get("s_per_step")) and progress.get("max_steps") is not None:
        return max(0, progress["max_steps"] - progress.get("step", 0)) * progress["s_per_step"]
    if phase == "eval" and _number(progress.get("s_per_item")) and progress.get("eval_total") is not None:
        return round(max(0, progress["eval_total"] - progress.get("eval_done", 0)) * progress["s_per_item"], 6)
    return None


def run_remaining_s(progress: dict, eval_s: float | None = None) -> float | None:
    """Seconds until a running run is done: its phase's remainder, plus ``eval_s`` (a typical evaluation, from the
    study's completed runs) while it still trains; None while its pace is unknown.

    >>> run_remaining_s({"phase": "train", "step": 40, "max_steps": 48, "s_per_step": 2.0}, eval_s=30.0)
    46.0
    """
    left = remaining_s(progress)
    if left is None:
        return None
    return left + (eval_s if progress.get("phase") == "train" and _number(eval_s) else 0.0)


def format_eta(progress: dict, eval_s: float | None = None) -> str | None:
    """A running run's ETA in words: with ``+ evaluation`` while it trains and no evaluation has been timed yet.

    >>> format_eta({"phase": "train", "step": 47, "max_steps": 48, "s_per_step": 1.5})
    '2s + evaluation'
    >>> format_eta({"phase": "train", "step": 47, "max_steps": 48, "s_per_step": 1.5}, eval_s=30.0)
    '32s'
    """
    left = run_remaining_s(progress, eval_s)
    if left is None:
        return None
    return format_duration(left) + (" + evaluation" if progress.get("phase") == "train" and not _number(eval_s)
                                    else "")


def study_remaining_s(running: list[float | None], waiting: int, run_s: float | None) -> float | None:
    """Seconds until every run is done, taking the runs now running as how many run at once: the longer of the
    longest running run and (their remainders + ``waiting`` runs of ``run_s`` each) / that many; None when a
    needed figure is unknown. An estimate: dependencies and a cluster that grows or shrinks are not modelled.

    >>> study_remaining_s([100.0, 40.0], waiting=2, run_s=200.0)  # (100 + 40 + 400) / 2
    270.0
    >>> study_remaining_s([100.0], waiting=0, run_s=None), study_remaining_s([None], 1, 200.0)
    (100.0, 400.0)
    """
    known = [r if r is not None else run_s for r in running]
    if any(r is None for r in known) or (waiting and run_s is None):
        return None
    if not known and not waiting:
        return 0.0
    parallel = max(1, len(known))
    return max(max(known, default=0.0), (sum(known) + waiting * (run_s or 0.0)) / parallel)


def format_duration(seconds: float | None) -> str:
    """``45s``, ``12m05s``, ``3h07m``; ``?`` when unknown.

    >>> format_duration(45.2), format_duration(725), format_duration(11220), format_duration(None)
    ('45s', '12m05s', '3h07m', '?')
    """
    if not _number(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
