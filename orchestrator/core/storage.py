"""A study directory in object storage, as Ray Train's ``storage_path``: any ``pyarrow.fs`` URI.

    rankstudy run configs/paper.yaml --output 's3://bucket/studies/paper?region=us-east-1'
    rankstudy run ... --output 's3://bucket/p?endpoint_override=minio.local:9000&scheme=http'   # MinIO, Ceph, ...
    rankstudy run ... --output gs://bucket/studies/paper

Every process works on a local staging copy (``RANKSTUDY_STAGING_DIR``, else ``~/.cache/rankstudy/staging``, one
directory per URI) with the code that works on a local study, and :class:`RemoteDir` moves files between the
two at the points where the contract says a file is whole: :class:`orchestrator.core.contract.StudyPaths` pulls a
run.json before reading it and pushes run.json, tables and progress.json after writing them (run.json last, so
a run is complete in the store only once its tables are); a run uploads each checkpoint once its marker is
written (the marker last) and a resumed attempt downloads its latest complete one; ``analyze`` and ``status``
pull what they read. An object is written whole (a PUT), so a reader never sees half of one. Credentials and
region come from the environment as for any ``pyarrow.fs`` client (``AWS_ACCESS_KEY_ID``, an instance role,
``GOOGLE_APPLICATION_CREDENTIALS``, ...).

``cache_dir`` may be such a URI too: a built or warm-started model is looked up there by its content key,
downloaded if present, else made here and uploaded (its record file last), and the runs load it from the store
(:func:`fetch`: once per node). Torch-free and Ray-free.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.errors import StudyError

# What a pull of the whole study leaves out: the bulk no reader of results needs (a resumed run pulls its own).
BULK = ("checkpoints", "adapter")


def is_uri(location: str | os.PathLike | None) -> bool:
    """Whether ``location`` names object storage (``scheme://...``) rather than a local path (``file://`` is local).

    >>> is_uri("s3://bucket/x"), is_uri("runs/laptop"), is_uri("file:///tmp/x"), is_uri(None)
    (True, False, False, False)
    """
    text = str(location) if location is not None else ""
    return "://" in text and not text.startswith("file://")


def write_probe(root: Path) -> tuple[Path, str]:
    """A marker file with a fresh token in a local output directory, for every node to look for."""
    import uuid

    token = uuid.uuid4().hex
    root.mkdir(parents=True, exist_ok=True)
    marker = root / f".rankstudy-shared-{token[:12]}"
    marker.write_text(token)
    return marker, token


def unshared_output_error(root: Path, unseen: list[str], nodes: int) -> str:
    """The one line that refuses a local output some nodes of the cluster do not see (Ray Train refuses a local
    storage_path on a multi-node cluster likewise).

    >>> unshared_output_error(Path("/data/s"), ["10.0.0.8 (ab12cd34)"], 3).split(";")[0]
    '--output /data/s is not shared: 1 of the 3 nodes (10.0.0.8 (ab12cd34)) do not see it'
    """
    return (f"--output {root} is not shared: {len(unseen)} of the {nodes} nodes ({', '.join(unseen[:3])}"
            f"{', ...' if len(unseen) > 3 else ''}) do not see it; runs there would write where no other process "
            "reads. Use a filesystem every node mounts, an object-storage URI (--output s3://bucket/path), or "
            "--output-shared if it is shared and only slow to show new files")


def local_path(location: str | os.PathLike) -> Path:
    """A local location as a path (``file:///x`` -> ``/x``)."""
    text = str(location)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def join_uri(base: str, relative: str | Path) -> str:
    """``base`` with a path appended, its query options kept at the end.

    >>> join_uri("s3://b/cache?scheme=http", "warmstart/ab12")
    's3://b/cache/warmstart/ab12?scheme=http'
    """
    path, sep, query = base.partition("?")
    return f"{path.rstrip('/')}/{Path(relative).as_posix()}{sep}{query}"


def staging_base() -> Path:
    return Path(os.environ.get("RANKSTUDY_STAGING_DIR") or Path.home() / ".cache" / "rankstudy" / "staging")


def fetch(uri: str) -> Path:
    """A file or directory of object storage on this machine (downloaded once per node; a directory whole)."""
    remote = RemoteDir.parse(uri)
    done = remote.staging.with_name(remote.staging.name + ".fetched")
    if not done.exists():
        import pyarrow.fs as pafs

        kind = remote.fs.get_file_info(remote.root).type
        if kind == pafs.FileType.NotFound:
            raise StudyError(f"{uri}: not in the storage")
        if kind == pafs.FileType.File:
            remote._get(remote.root, remote.staging / Path(remote.root).name)
        else:
            remote.pull("")
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(uri)
    file = remote.staging / Path(remote.root).name
    return file if file.is_file() else remote.staging


@dataclass
class RemoteDir:
    """A directory in a ``pyarrow.fs`` filesystem (a study, a cache), and this machine's staging copy of it."""

    uri: str
    fs: Any  # pyarrow.fs.FileSystem
    root: str  # the study's path inside ``fs`` (bucket/prefix)
    staging: Path
    _created: bool = False  # the root made once before the first upload (an S3 bucket, with allow_bucket_creation)

    @classmethod
    def parse(cls, uri: str) -> RemoteDir:
        import pyarrow.fs as pafs

        try:
            fs, root = pafs.FileSystem.from_uri(uri)
        except (ValueError, OSError) as err:
            raise StudyError(f"{uri}: not a storage URI pyarrow.fs can open ({str(err).splitlines()[0]})") from None
        name = root.rstrip("/").rsplit("/", 1)[-1] or "study"
        return cls(uri, fs, root.rstrip("/"), staging_base() / f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}")

    def check_reachable(self) -> None:
        """One line when the store cannot be reached or written (before any model loads)."""
        probe = f"{self.root}/.rankstudy-probe"
        try:
            self.fs.create_dir(self.root, recursive=True)
            with self.fs.open_output_stream(probe) as out:
                out.write(b"ok")
            self.fs.delete_file(probe)
        except (OSError, ValueError) as err:
            raise StudyError(f"{self.uri}: cannot write to the storage ({str(err).splitlines()[0]})") from None

    def uri_of(self, relative: str) -> str:
        """The store's address of a file of the study, for people (without the URI's query options).

        >>> RemoteDir("s3://b/x?scheme=http", None, "b/x", Path("/tmp")).uri_of("report/index.html")
        's3://b/x/report/index.html'
        """
        return f"{self.uri.partition('?')[0].rstrip('/')}/{relative}"

    # -- one path (relative to the study root) -------------------------------------------------------------
    def _remote(self, relative: str | Path) -> str:
        part = Path(relative).as_posix()
        return self.root if part in ("", ".") else f"{self.root}/{part}"

    def exists(self, relative: str | Path) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self._remote(relative)).type != pafs.FileType.NotFound

    def push(self, relative: str | Path, last: str | None = None) -> None:
        """Upload the staging file or directory at ``relative``; a directory's file named ``last`` (its record or
        marker: what says it is whole) goes after every other."""
        local = self.staging / relative
        if local.is_dir():
            for path in sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: (p.name == last, p)):
                self._put(path)
        elif local.exists():
            self._put(local)

    def _put(self, path: Path) -> None:
        if not self._created:
            self.fs.create_dir(self.root, recursive=True)
            self._created = True
        target = self._remote(path.relative_to(self.staging))
        with self.fs.open_output_stream(target) as out, path.open("rb") as source:
            shutil.copyfileobj(source, out, 8 << 20)

    def pull(self, relative: str | Path) -> bool:
        """Download a file or a directory tree into staging (a file the store lacks is removed from staging, so
        a stale copy never passes for the store's); whether it exists in the store."""
        import pyarrow.fs as pafs

        remote, local = self._remote(relative), self.staging / relative
        kind = self.fs.get_file_info(remote).type
        if kind == pafs.FileType.NotFound:
            if local.is_file():
                local.unlink()
            return False
        if kind == pafs.FileType.File:
            self._get(remote, local)
            return True
        for info in self.fs.get_file_info(pafs.FileSelector(remote, recursive=True)):
            if info.type == pafs.FileType.File:
                self._get(info.path, self.staging / info.path[len(self.root) + 1:])
        return True

    def _get(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        temp = local.with_name(f".{local.name}.download")
        with self.fs.open_input_stream(remote) as source, temp.open("wb") as out:
            shutil.copyfileobj(source, out, 8 << 20)
        os.replace(temp, local)  # readers of the staging copy see whole files only, as everywhere else

    def delete(self, relative: str | Path) -> None:
        import pyarrow.fs as pafs

        remote = self._remote(relative)
        kind = self.fs.get_file_info(remote).type
        if kind == pafs.FileType.Directory:
            self.fs.delete_dir(remote)
        elif kind == pafs.FileType.File:
            self.fs.delete_file(remote)

    def subdirs(self, relative: str | Path) -> list[str]:
        """Names of the directories directly under ``relative`` in the store."""
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self._remote(relative), allow_not_found=True))
        return sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory)

    # -- the whole study -----------------------------------------------------------------------------------
    def pull_study(self, skip: tuple[str, ...] = BULK) -> int:
        """Download every file of the study except those under a directory named in ``skip``; how many."""
        import pyarrow.fs as pafs

        self.staging.mkdir(parents=True, exist_ok=True)
        count = 0
        for info in self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True, allow_not_found=True)):
            relative = info.path[len(self.root) + 1:]
            if info.type == pafs.FileType.File and not set(Path(relative).parts[:-1]) & set(skip):
                self._get(info.path, self.staging / relative)
                count += 1
        return count
