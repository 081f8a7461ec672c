"""The output contract of a study directory, and atomic writes into it.

```
DIR/study.yaml                 resolved config, package versions, git commit
DIR/runs/<run_id>/run.json     spec, status, allocation (per-layer ranks), trainable params, timings, error
DIR/profiles/<run_id>.parquet  run_id, strategy, seed, step, layer, module, rank, grad_norm, nonfinite
DIR/metrics/<run_id>.parquet   run_id, strategy, seed, step, reward, reward_format, reward_correctness,
                               reward_std, kl, loss, step_time_s, ...
DIR/eval/<run_id>.parquet      run_id, strategy, seed, item, correct, format_ok, prediction, target, completion
```

Every file is written to a temporary name in the same directory and renamed into place, so a crash never
leaves a truncated file, and ``pandas.read_parquet(DIR / "profiles")`` only ever sees whole files. A run is
complete when its run.json says so and its three Parquet files exist; completed results are never rewritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TABLES = ("profiles", "metrics", "eval")
COMPLETED = "completed"


class StudyPaths:
    """Where each file of the contract lives for one study directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def study_yaml(self) -> Path:
        return self.root / "study.yaml"

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def run_json(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "run.json"

    def checkpoints(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "checkpoints"

    def table(self, kind: str, run_id: str) -> Path:
        assert kind in TABLES, kind
        return self.root / kind / f"{run_id}.parquet"

    def read_run(self, run_id: str) -> dict[str, Any] | None:
        path = self.run_json(run_id)
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def is_complete(self, run_id: str) -> bool:
        record = self.read_run(run_id)
        return (
            record is not None
            and record.get("status") == COMPLETED
            and all(self.table(kind, run_id).exists() for kind in TABLES)
        )


_UMASK = os.umask(0)  # read the process umask (the only way is to set it) and restore it at once
os.umask(_UMASK)


@contextlib.contextmanager
def _atomic_target(path: Path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; once the block has written it, fsync and rename it into place.

    The dot-prefixed temp name is skipped by pyarrow's dataset discovery (pandas.read_parquet on a directory).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; results are shared (a cluster's output directory, a report sent to
        # colleagues), so give it the mode an ordinary open() would: 0666 less the umask.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with _atomic_target(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, record: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_table(path: Path, table: pa.Table) -> None:
    """Write a Parquet file atomically (temp file in the same directory, then rename)."""
    with _atomic_target(path) as tmp:
        pq.write_table(table, tmp)
