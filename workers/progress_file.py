"""The running attempt's side of DIR/runs/<run_id>/progress.json (the record: orchestrator/core/heartbeat.py).

    progress = ProgressFile(paths.progress(run_id), attempt=2)
    progress.start()                                   # phase setup, then a heartbeat every HEARTBEAT_S
    progress.update({"phase": "train", "step": 3, "max_steps": 48, "step_time_s": 1.9})  # adds s_per_step
    progress.close()

Each update rewrites the file with the attempt's pace so far (seconds per step since its first step, per item
since evaluation began); the daemon thread rewrites it with a new ``heartbeat`` time in between, so a long
setup (a model download, a vLLM engine start) or a long step is not mistaken for a dead process. A failed write
(a full disk) is never fatal: the run's results matter more than its heartbeat.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.core.contract import atomic_write_json
from orchestrator.core.heartbeat import HEARTBEAT_S


class ProgressFile:
    def __init__(self, path: Path, attempt: int, period_s: float = HEARTBEAT_S,
                 publish: Callable[[], None] | None = None):
        self.path, self.period_s = path, period_s
        self.publish = publish  # after each write: a study in object storage uploads the file
        self._lock = threading.Lock()
        self._identity = {"attempt": attempt, "pid": os.getpid(), "host": socket.gethostname()}
        self._state: dict = {"phase": "setup", **self._identity, "updated": time.time()}
        self._origin: dict[str, tuple[float, int]] = {}  # phase -> (time, count) of the attempt's first report
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            self._write()
        self._thread = threading.Thread(target=self._beat, name="rankstudy-heartbeat", daemon=True)
        self._thread.start()

    def update(self, progress: dict) -> dict:
        """Record a progress report; returns it with the phase and pace added (what the driver is told too)."""
        now = time.time()
        progress = {"phase": "train" if "step" in progress else progress.get("phase", "setup"), **progress}
        if progress["phase"] == "train":
            progress["s_per_step"] = self._pace("train", now, progress.get("step"), progress.get("step_time_s"))
        elif progress["phase"] == "eval":
            progress["s_per_item"] = self._pace("eval", now, progress.get("eval_done"), None)
        with self._lock:
            self._state = {**progress, **self._identity, "updated": now}
            self._write()
        return progress

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _pace(self, phase: str, now: float, count, last_duration) -> float | None:
        """Seconds per unit since the phase's first report in this attempt (a resumed run starts at its step)."""
        if count is None:
            return None
        if phase not in self._origin:
            # The first step's own duration dates the start of training; evaluation reports 0 items at its start.
            known = isinstance(last_duration, (int, float)) and math.isfinite(last_duration)
            self._origin[phase] = (now - last_duration, count - 1) if known else (now, count)
        start, first = self._origin[phase]
        return (now - start) / (count - first) if count > first else None

    def _beat(self) -> None:
        while not self._stop.wait(self.period_s):
            with self._lock:
                self._write()

    def _write(self) -> None:
        try:
            atomic_write_json(self.path, {**self._state, "heartbeat": time.time()})
            if self.publish is not None:
                self.publish()
        except OSError:
            pass
