"""Atomic writes: every file of a study directory is written to a temporary name beside it and renamed into
place, so a crash never leaves a truncated file (the output contract, orchestrator/core/contract.py)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

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


def atomic_write_json(path: Path, record: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_table(path: Path, table: pa.Table) -> None:
    """Write a Parquet file atomically (temp file in the same directory, then rename)."""
    with _atomic_target(path) as tmp:
        pq.write_table(table, tmp)
