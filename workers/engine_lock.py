"""One vLLM engine start at a time per GPU: a node-local file lock held while an engine profiles memory.

Each vLLM engine measures the GPU's free memory when it starts and sizes its KV cache from that; two engines
starting on one GPU at the same moment both see the other's memory as free and one of them fails (vllm#9198;
vLLM's own colocation example expects exclusive use of the GPU while an engine initialises). Runs packed on one
GPU (``resources.gpus_per_run`` < 1) therefore build their trainer, and so TRL's colocated engine, inside
:func:`engine_start_lock`: an ``fcntl`` lock on a file named after the devices the run sees
(``CUDA_VISIBLE_DEVICES``, which Ray sets per actor), so the next engine starts only once the previous one has
finished its profiling, and runs on other GPUs do not wait. The wait and the held interval are recorded in
run.json (``memory_plan.engine_start``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def lock_path(devices: str | None = None, directory: str | None = None) -> Path:
    """The lock file of the GPU(s) this process sees (``cpu`` without CUDA_VISIBLE_DEVICES).

    >>> lock_path("3", "/tmp").name, lock_path("0,1", "/tmp").name
    ('rankstudy-engine-start-3.lock', 'rankstudy-engine-start-0_1.lock')
    """
    devices = os.environ.get("CUDA_VISIBLE_DEVICES") if devices is None else devices
    key = re.sub(r"[^A-Za-z0-9]+", "_", devices or "cpu").strip("_") or "cpu"
    return Path(directory or tempfile.gettempdir()) / f"rankstudy-engine-start-{key}.lock"


@contextlib.contextmanager
def engine_start_lock(timings: dict, path: Path | None = None) -> Iterator[None]:
    """Hold this GPU's engine-start lock for the block; ``timings`` gets waited_s, started_at, finished_at."""
    path = path or lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    requested = time.time()
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        started = time.time()
        timings.update(waited_s=round(started - requested, 3), started_at=started, lock=str(path))
        try:
            yield
        finally:
            timings["finished_at"] = time.time()
            fcntl.flock(handle, fcntl.LOCK_UN)
