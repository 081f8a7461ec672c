"""The output contract of a study directory, in one torch-free module: paths, run ids, run.json, table schemas.

```
DIR/study.yaml                 resolved config, package versions, git commit
DIR/plan.json                  the latest invocation's grid: one object per run (run_id, depends_on, ...)
DIR/runs/<run_id>/run.json     a RunRecord: spec, cell axes, status, allocation, importance, LoRA audit, timings
DIR/runs/<run_id>/adapter/     the trained LoRA adapter (PEFT format)
DIR/profiles/<run_id>.parquet  PROFILE_SCHEMA: one row per optimizer step x layer x module
DIR/metrics/<run_id>.parquet   metrics_schema(): one row per optimizer step
DIR/eval/<run_id>.parquet      EVAL_SCHEMA: one row per test item
DIR/geometry/<run_id>.parquet  GEOMETRY_SCHEMA: one row per measured step x layer x module (profile.geometry)
DIR/report/summary.json, index.html
```

Workers write it, synthetic studies imitate it and the analysis reads it, all through this module. Every file
is written to a temporary name in the same directory and renamed into place, so a crash never leaves a
truncated file, and ``pandas.read_parquet(DIR / "profiles")`` only ever sees whole files. A run is complete
when its run.json says so and the Parquet files it lists (``tables``: profiles, metrics and eval for a trained
run, plus geometry when it was measured; eval alone for the base model's evaluation-only run) exist; completed
results are never rewritten.

Profile rows carry a ``component``: ``total`` for the ordinary per-step rows (the gradient the optimizer used),
and, on the steps where ``profile.decompose_every`` splits the policy gradient, one row per reward name and one
for ``kl`` (workers/decompose.py). Every statistic of the paper (Eq. 2, landscape, amplification, allocation)
reads the ``total`` rows only; a profile written before the column existed reads as all ``total``
(:func:`total_rows`). ``weight_grad_norm`` (null unless measured: ``profile.weight_gradient_every``) is the
frozen weight's gradient norm on the ``total`` rows of the measured steps (workers/weight_gradient.py).

Run ids are ``<strategy>-seed<seed>`` in a study without axes, and ``<strategy>-seed<seed>__<cell>`` with
them, where the cell part names each axis by the last part of its dotted key (the whole key where two axes
share it) and its value: ``uniform-seed0__rank-8__learning_rate-1e-05``. They are stable (the same run
always gets the same id, so a re-run finds its results), unique within a study and filesystem-safe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from orchestrator.core.atomic import (  # noqa: F401 - the contract's writers, re-exported for its users
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_table,
    atomic_write_text,
)
from orchestrator.core.errors import StudyError

TABLES = ("profiles", "metrics", "eval", "geometry")  # every table of the contract
TRAINED_TABLES = ("profiles", "metrics", "eval")  # what every trained run writes (geometry is optional)
EVALUATED_TABLES = ("eval",)  # what an evaluation-only run writes (the base model)
TOTAL = "total"  # the profile component of the ordinary gradient
KL_COMPONENT = "kl"  # the profile component of the KL term's gradient
COMPLETED, RUNNING, FAILED = "completed", "running", "failed"
CELL_SEPARATOR = "__"
MAX_RUN_ID_LENGTH = 200  # file names (<run_id>.parquet) must stay below the usual 255-byte limit

PROFILE_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("strategy", pa.string()), ("seed", pa.int64()), ("step", pa.int64()),
    ("layer", pa.int64()), ("module", pa.string()), ("rank", pa.int64()), ("grad_norm", pa.float64()),
    ("nonfinite", pa.bool_()), ("component", pa.string()), ("weight_grad_norm", pa.float64()),
])
# The profile column each S(l) source reads (config ``allocation.importance``; the analysis's controls):
# ``grad_norm`` is the LoRA gradient's norm (every step), ``weight_grad_norm`` the frozen weight's
# ||dL/dW||_F (on the steps ``profile.weight_gradient_every`` measures, null on the others and on component rows).
IMPORTANCE_MEASURES = {"lora_grad": "grad_norm", "weight_grad": "weight_grad_norm"}
GEOMETRY_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("strategy", pa.string()), ("seed", pa.int64()), ("step", pa.int64()),
    ("layer", pa.int64()), ("module", pa.string()), ("rank", pa.int64()), ("update_norm", pa.float64()),
    ("effective_rank", pa.float64()), ("principal_overlap", pa.float64()),
])
EVAL_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("strategy", pa.string()), ("seed", pa.int64()), ("item", pa.int64()),
    ("correct", pa.bool_()), ("format_ok", pa.bool_()), ("prediction", pa.string()), ("target", pa.string()),
    ("completion", pa.string()),
])
# Per-step training metrics besides the per-reward means, in file order.
# is_*/sampling_*: TRL's importance-sampling statistics (vLLM rollouts only; NaN otherwise); clip_ratio_*: the
# share of tokens clipped below/above/in the PPO region.
STEP_METRICS = ("reward_std", "kl", "loss", "grad_norm", "frac_reward_zero_std", "completion_mean_length",
                "completion_clipped_ratio", "entropy", "learning_rate", "sampling_logp_diff_mean",
                "sampling_logp_diff_max", "is_ratio_min", "is_ratio_mean", "is_ratio_max", "clip_ratio_low",
                "clip_ratio_high", "clip_ratio_region", "step_time_s", "profile_time_s")


def run_tables(trains: bool, geometry: bool) -> list[str]:
    """The tables one run writes: profiles, metrics and eval when it trains (plus geometry when it is measured),
    eval alone when it only evaluates (run.json ``tables``; the run is complete when they all exist).

    >>> run_tables(True, False), run_tables(True, True), run_tables(False, True)
    (['profiles', 'metrics', 'eval'], ['profiles', 'metrics', 'eval', 'geometry'], ['eval'])
    """
    if not trains:
        return list(EVALUATED_TABLES)
    return [*TRAINED_TABLES, *(["geometry"] if geometry else [])]


def total_rows(table: pa.Table) -> pa.Table:
    """The ``total`` component rows of a profile table (all of them when it predates the column).

    >>> old = pa.table({"step": [1, 1], "grad_norm": [1.0, 2.0]})
    >>> total_rows(old).num_rows
    2
    >>> new = pa.table({"step": [1, 1], "grad_norm": [1.0, 0.5], "component": ["total", "format"]})
    >>> total_rows(new).column("grad_norm").to_pylist()
    [1.0]
    """
    if "component" not in table.column_names:
        return table
    import pyarrow.compute as pc

    return table.filter(pc.equal(table.column("component"), TOTAL))


def reward_column(reward: str) -> str:
    """The metrics column of one reward's per-step mean.

    >>> reward_column("format")
    'reward_format'
    """
    return f"reward_{reward}"


def metrics_schema(rewards: Sequence[str] = ("format", "correctness")) -> pa.Schema:
    """The metrics table's schema for a run with these reward names (``reward`` is their sum)."""
    return pa.schema(
        [("run_id", pa.string()), ("strategy", pa.string()), ("seed", pa.int64()), ("step", pa.int64()),
         ("reward", pa.float64())]
        + [(reward_column(r), pa.float64()) for r in rewards]
        + [(name, pa.float64()) for name in STEP_METRICS]
        + [("rollout_digest", pa.string())]
    )


# -- run ids and cells -------------------------------------------------------------------------------------
_SAFE_VALUE = re.compile(r"[A-Za-z0-9.][A-Za-z0-9._-]*")


def format_axis_value(value: Any) -> str:
    """An axis value as it appears in a run id: plain when filesystem-safe, else slugged with a short hash.

    >>> [format_axis_value(v) for v in (8, 1e-05, True, None, "fixed_alpha")]
    ['8', '1e-05', 'true', 'null', 'fixed_alpha']
    >>> format_axis_value("Qwen/Qwen2.5-1.5B")
    'Qwen_Qwen2.5-1.5B-d9621eb4'
    """
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
    if isinstance(value, str) and _SAFE_VALUE.fullmatch(text) and CELL_SEPARATOR not in text:
        return text
    slug = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9.-]", "_", text)).strip("_.-")[:40] or "value"
    return f"{slug}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def axis_labels(keys: Sequence[str]) -> dict[str, str]:
    """Short names for axis keys in run ids: the last dotted part, or the whole key where that is ambiguous.

    >>> axis_labels(["lora.rank", "grpo.learning_rate", "model.build.seed", "warm_start.seed"])
    {'lora.rank': 'rank', 'grpo.learning_rate': 'learning_rate', 'model.build.seed': 'model.build.seed', 'warm_start.seed': 'warm_start.seed'}
    """
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: short if last.count(short) == 1 else key for key, short in zip(keys, last, strict=True)}


def cell_slug(axes: Mapping[str, Any]) -> str:
    """The cell part of a run id ('' without axes).

    >>> cell_slug({}), cell_slug({"lora.rank": 8, "grpo.learning_rate": 1e-05})
    ('', 'rank-8__learning_rate-1e-05')
    """
    labels = axis_labels(list(axes))
    return CELL_SEPARATOR.join(f"{labels[key]}-{format_axis_value(value)}" for key, value in axes.items())


def run_id(strategy: str, seed: int, axes: Mapping[str, Any] | None = None) -> str:
    """The stable id of one run of the grid.

    >>> run_id("uniform", 3), run_id("uniform", 3, {"lora.rank": 8})
    ('uniform-seed3', 'uniform-seed3__rank-8')
    """
    base = f"{strategy}-seed{seed}"
    slug = cell_slug(axes or {})
    return f"{base}{CELL_SEPARATOR}{slug}" if slug else base


def parse_run_id(value: str) -> tuple[str, int | None, str]:
    """(strategy, seed, cell slug) of a run id; seed None when the id is not of this module's form.

    >>> parse_run_id("uniform-seed3"), parse_run_id("random-seed0__rank-8"), parse_run_id("sft-warmup")
    (('uniform', 3, ''), ('random', 0, 'rank-8'), ('sft-warmup', None, ''))
    """
    head, _, slug = value.partition(CELL_SEPARATOR)
    match = re.fullmatch(r"(.+)-seed(\d+)", head)
    return (match.group(1), int(match.group(2)), slug) if match else (value, None, "")


def actor_name(strategy: str, seed: int, axes: Mapping[str, Any] | None = None) -> str:
    """The run's actor name in the Ray dashboard.

    >>> actor_name("uniform", 0), actor_name("uniform", 0, {"lora.rank": 8, "lora.alpha": 16})
    ('grpo:uniform:seed0', 'grpo:uniform:seed0:rank-8,alpha-16')
    """
    slug = cell_slug(axes or {})
    return f"grpo:{strategy}:seed{seed}" + (":" + slug.replace(CELL_SEPARATOR, ",") if slug else "")


# -- run.json ----------------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """DIR/runs/<run_id>/run.json: what one run is, how far it got, and what it was given and measured."""

    run_id: str
    strategy: str
    seed: int | None
    axes: dict[str, Any] = field(default_factory=dict)  # the run's cell: {dotted key: value}; {} without axes
    spec: dict[str, Any] = field(default_factory=dict)  # depends_on (run id) / profile_path (a fixed profile)
    status: str = RUNNING
    attempt: int = 1
    # one entry per attempt: node_id, node_ip, host, pid, started_at, ended_at, ended (orchestrator/core/attempts.py)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    host: str | None = None
    cpu: dict[str, Any] | None = None  # what ran it: CPU model, torch's kernel capability, threads (figures differ by CPU)
    pid: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    traceback: str | None = None
    num_layers: int | None = None
    allocation: list[int] | None = None  # rank per layer, as audited (ranks that change: the final, mean over modules)
    initial_allocation: list[int] | None = None  # ranks that change while training (adalora): rank per layer at start
    module_ranks: dict[str, list[int]] | None = None  # ranks that change: per module, per layer, at the end
    importance: list[float] | None = None  # S(l) the allocation used, when it used one
    importance_source: str | None = None  # the profile it came from
    importance_measure: str | None = None  # which norm S(l) summed: an IMPORTANCE_MEASURES key (allocation.importance)
    importance_nonfinite: int | None = None  # profile rows left out of S(l) (non-finite grad_norm)
    trainable_params: int | None = None
    lora: dict[str, Any] | None = None  # the LoRA audit: layer ranks, layer params, scaling
    lora_params: dict[str, list[int]] | None = None  # per module, per layer
    frozen_base: dict[str, str] | None = None  # sha256 of every frozen weight: before training, after evaluation
    resumed_from_step: int | None = None
    diverged_at_step: int | None = None  # the step from which its gradient norms stayed non-finite (it diverged)
    memory_plan: dict[str, Any] | None = None  # vLLM's share of the card and how it was derived; engine-start wait
    steps: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    eval: dict[str, Any] | None = None  # n, correct, accuracy
    warnings: list[str] = field(default_factory=list)  # what the run noticed and left as it was (one line each)
    tables: list[str] = field(default_factory=lambda: list(TRAINED_TABLES))  # the tables this run writes
    extra: dict[str, Any] = field(default_factory=dict)  # keys of other rankstudy versions, kept as they are

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], fallback_run_id: str | None = None) -> RunRecord:
        """A record from parsed run.json; strategy and seed default to the run id's. Raises ValueError/TypeError."""
        if not isinstance(data, Mapping):
            raise TypeError(f"run.json must hold an object, got {type(data).__name__}")
        rid = str(data.get("run_id") or fallback_run_id or "")
        if not rid:
            raise ValueError("run.json has no run_id")
        strategy, seed, _ = parse_run_id(rid)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        known["run_id"], known["strategy"] = rid, str(known.get("strategy") or strategy)
        known["seed"] = int(known["seed"]) if known.get("seed") is not None else seed
        for key in ("allocation", "initial_allocation"):
            if known.get(key) is not None:
                known[key] = [int(v) for v in known[key]]
        for key in ("lora_params", "module_ranks"):
            if known.get(key) is not None:
                known[key] = {str(m): [int(p) for p in v] for m, v in dict(known[key]).items()}
        for key in ("axes", "spec", "timings"):
            known[key] = dict(known.get(key) or {})
        known["warnings"] = [str(w) for w in known.get("warnings") or []]
        known["attempts"] = [dict(a) for a in known.get("attempts") or [] if isinstance(a, Mapping)]
        known["tables"] = [str(t) for t in known.get("tables") or TRAINED_TABLES]
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})


# -- paths -------------------------------------------------------------------------------------------------
class StudyPaths:
    """Where each file of the contract lives for one study directory: a local path, or an object-storage URI
    (``s3://...``: orchestrator/core/storage.py), whose paths are those of this machine's staging copy; then
    reading a run.json pulls it first and the writes below push what they wrote (:attr:`remote`)."""

    def __init__(self, root: str | os.PathLike):
        from orchestrator.core.storage import RemoteDir, is_uri, local_path

        self.remote = RemoteDir.parse(str(root)) if is_uri(root) else None
        self.location = str(root)  # as given: what a process on another node opens
        self.root = self.remote.staging if self.remote else local_path(root)

    @property
    def study_yaml(self) -> Path:
        return self.root / "study.yaml"

    @property
    def plan(self) -> Path:
        """The latest invocation's grid (``rankstudy plan --json``), which ``rankstudy status`` reads."""
        return self.root / "plan.json"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def run_json(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "run.json"

    def progress(self, run_id: str) -> Path:
        """The running attempt's latest progress (phase, step, eval items, time), rewritten as it goes."""
        return self.run_dir(run_id) / "progress.json"

    def adapter(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "adapter"

    def checkpoints(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "checkpoints"

    def table_dir(self, kind: str) -> Path:
        if kind not in TABLES:
            raise ValueError(f"unknown table {kind!r}; the contract's tables are {TABLES}")
        return self.root / kind

    def table(self, kind: str, run_id: str) -> Path:
        return self.table_dir(kind) / f"{run_id}.parquet"

    def read_record(self, run_id: str) -> RunRecord | None:
        path = self.run_json(run_id)
        self.pull(path)
        if not path.exists():
            return None
        try:
            return RunRecord.from_json(json.loads(path.read_text()), fallback_run_id=run_id)
        except (ValueError, TypeError, KeyError, AttributeError) as err:  # JSONDecodeError is a ValueError
            raise StudyError(f"{path}: not a readable run.json ({err}); move it aside to re-run {run_id}") from None

    def write_record(self, record: RunRecord) -> None:
        atomic_write_json(self.run_json(record.run_id), record.to_json())
        self.push(self.run_json(record.run_id))

    def write_table(self, kind: str, run_id: str, table: pa.Table) -> None:
        atomic_write_table(self.table(kind, run_id), table)
        self.push(self.table(kind, run_id))

    def is_complete(self, run_id: str, record: RunRecord | None = None) -> bool:
        """Whether the run completed: its run.json (``record``, when already read) says so and its tables exist."""
        record = record if record is not None else self.read_record(run_id)
        return (record is not None and record.status == COMPLETED
                and all(self.exists(self.table(kind, run_id)) for kind in record.tables))

    # -- object storage (no-ops for a local directory) -------------------------------------------------------
    def exists(self, path: Path) -> bool:
        return self.remote.exists(path.relative_to(self.root)) if self.remote else path.exists()

    def push(self, path: Path) -> None:
        """Upload a file or directory of the staging copy."""
        if self.remote:
            self.remote.push(path.relative_to(self.root))

    def pull(self, path: Path) -> bool:
        """Download a file or directory into the staging copy; whether it exists (locally: whether it is there)."""
        return self.remote.pull(path.relative_to(self.root)) if self.remote else path.exists()
