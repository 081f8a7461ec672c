"""TRL's GRPOTrainer with the three things a study run adds: profiling, per-step records, resumable state.

- :class:`ProfiledGRPOTrainer` captures LoRA gradient norms right before transformers clips them (the only
  change to TRL's behaviour-free code path; see workers/profiler.py for why before clipping).
- :class:`StepRecorder` keeps one metrics row per optimizer step from TRL's logs (logging_steps=1), the step's
  wall time, and a digest of the step's rollouts (so tests and users can see that two seeds sampled
  differently), and reports progress to the caller.
- :class:`StopAtStepBoundary` ends training at the next step boundary once the run is told to stop (SIGTERM),
  saving a checkpoint there.
- :class:`CheckpointTables` writes the profile and metrics rows into each checkpoint directory, last of all a
  marker; a resumed run reloads them from the checkpoint it resumes from, so every step appears exactly once
  even if the process died between two checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from transformers import TrainerCallback
from trl import GRPOTrainer

from orchestrator.core.contract import metrics_schema, reward_column
from workers.compat import DecomposedGRPO
from workers.profiler import GradientProfiler, ProfileBeforeClipping, RunLabels

CHECKPOINT_MARKER = "rankstudy_tables.done"

# TRL 1.16 log key -> metrics column, besides the per-reward means (see :func:`trl_metric_columns`).
TRL_STEP_METRICS = {
    "reward_std": "reward_std",
    "kl": "kl",
    "loss": "loss",
    "grad_norm": "grad_norm",
    "frac_reward_zero_std": "frac_reward_zero_std",
    "completions/mean_length": "completion_mean_length",
    "completions/clipped_ratio": "completion_clipped_ratio",
    "entropy": "entropy",
    "learning_rate": "learning_rate",
    "sampling/sampling_logp_difference/mean": "sampling_logp_diff_mean",
    "sampling/sampling_logp_difference/max": "sampling_logp_diff_max",
    "sampling/importance_sampling_ratio/min": "is_ratio_min",
    "sampling/importance_sampling_ratio/mean": "is_ratio_mean",
    "sampling/importance_sampling_ratio/max": "is_ratio_max",
    "clip_ratio/low_mean": "clip_ratio_low",
    "clip_ratio/high_mean": "clip_ratio_high",
    "clip_ratio/region_mean": "clip_ratio_region",
}


def trl_metric_columns(rewards: Mapping[str, Callable]) -> dict[str, str]:
    """TRL log key -> metrics column for a run with these rewards (config name -> reward function).

    TRL 1.16 logs ``reward`` (the sum) and ``rewards/<function __name__>/mean`` per reward.

    >>> from workers.rewards import format_reward
    >>> trl_metric_columns({"format": format_reward})["rewards/format_reward/mean"]
    'reward_format'
    """
    per_reward = {f"rewards/{fn.__name__}/mean": reward_column(name) for name, fn in rewards.items()}
    return {"reward": "reward", **per_reward, **TRL_STEP_METRICS}


LAYER_SHARE_KEY = "profile/layer_share/{layer:02d}"  # the trackers' name of a layer's share (train/ prefixed)


class LogLayerShares:
    """Trainer mixin: each training log (every ``logging_steps``) carries the profiler's per-layer shares of the
    step's LoRA gradient, so an experiment tracker shows the landscape beside TRL's scalars. Added before the
    trainer's own ``log`` hands the dict to the tracker callbacks (a callback's ``on_log`` would come after them)."""

    gradient_profiler: Any = None

    def log(self, logs, *args, **kwargs):
        if self.gradient_profiler is not None and "loss" in logs and self.args.report_to:
            logs.update({LAYER_SHARE_KEY.format(layer=layer): share
                         for layer, share in self.gradient_profiler.layer_shares().items()})
        return super().log(logs, *args, **kwargs)


class ProfiledGRPOTrainer(LogLayerShares, ProfileBeforeClipping, DecomposedGRPO, GRPOTrainer):
    """GRPOTrainer whose gradient profiler sees the gradients before clipping, whose loss can be decomposed per
    reward (workers/decompose.py) on the steps ``profile.decompose_every`` names, and whose logs carry the
    per-layer shares for an experiment tracker."""


class StepRecorder(TrainerCallback):
    """One metrics row per optimizer step; progress reports; rollout digests via a reward wrapper."""

    def __init__(self, labels: RunLabels, rewards: Mapping[str, Callable],
                 report: Callable[[dict], None] | None = None):
        self.labels = labels
        self.report = report
        self.columns = trl_metric_columns(rewards)
        self.schema = metrics_schema(list(rewards))
        self.rows: dict[int, dict] = {}
        self._step_start = 0.0
        self._step_time: dict[int, float] = {}
        self._digest = hashlib.sha1()
        self.profiler: GradientProfiler | None = None  # set once the trainer (and so the profiler) exists

    def watch_rollouts(self, reward_fn):
        """Wrap a reward function so the recorder sees every completion it scores (behaviour unchanged)."""

        def wrapped(completions, **kwargs):
            for completion in completions:
                self._digest.update(repr(completion).encode())
            return reward_fn(completions, **kwargs)

        wrapped.__name__ = reward_fn.__name__  # TRL names the reward metrics after the function
        return wrapped

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._step_time[state.global_step] = time.perf_counter() - self._step_start

    def on_log(self, args, state, control, logs=None, **kwargs):
        step = state.global_step
        if not logs or "loss" not in logs or step in self.rows:
            return  # the final train summary (train_runtime, ...) is not a step
        row = {"run_id": self.labels.run_id, "strategy": self.labels.strategy, "seed": self.labels.seed, "step": step}
        for key, column in self.columns.items():
            value = logs.get(key)
            row[column] = float(value) if value is not None else math.nan
        row["step_time_s"] = self._step_time.get(step, math.nan)
        # Part of step_time_s spent in the gradient profiler: profile_time_s / step_time_s is its overhead.
        row["profile_time_s"] = self.profiler.capture_seconds.get(step, math.nan) if self.profiler else math.nan
        row["rollout_digest"] = self._digest.hexdigest()[:16]
        self._digest = hashlib.sha1()
        self.rows[step] = row
        if self.report:
            self.report({"step": step, "max_steps": state.max_steps, "reward": row["reward"],
                         "step_time_s": row["step_time_s"]})

    def table(self, up_to_step: int | None = None) -> pa.Table:
        steps = sorted(s for s in self.rows if up_to_step is None or s <= up_to_step)
        return pa.Table.from_pylist([self.rows[s] for s in steps], schema=self.schema)

    def restore(self, table: pa.Table) -> None:
        self.rows = {row["step"]: row for row in table.to_pylist()}


class StopAtStepBoundary(TrainerCallback):
    """Ends training at the first step boundary after a stop request, saving a checkpoint there.

    transformers saves when a callback sets ``should_save`` at ``on_step_end`` (the step's optimizer update is
    done, its tables rows recorded), then leaves the loop on ``should_training_stop``; the resumed attempt starts
    at the next step, not at the last periodic checkpoint.
    """

    def __init__(self, stop):
        self.stop = stop  # a threading.Event, set by the actor's SIGTERM handler
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop.is_set():
            control.should_save = control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


class CheckpointTables(TrainerCallback):
    """Saves profile + metrics (+ geometry) rows with every checkpoint; :func:`latest_checkpoint` finds complete
    ones. With a geometry recorder, the update's geometry is measured at each checkpoint first."""

    def __init__(self, profiler: GradientProfiler, recorder: StepRecorder, geometry=None,
                 publish: Callable[[Path], None] | None = None):
        self.profiler = profiler
        self.recorder = recorder
        self.geometry = geometry
        self.publish = publish  # uploads a complete checkpoint (object storage: publish_checkpoint)

    def on_save(self, args, state, control, **kwargs):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not ckpt.is_dir():
            return
        pq.write_table(self.profiler.table(state.global_step), ckpt / "rankstudy_profile.parquet")
        pq.write_table(self.recorder.table(state.global_step), ckpt / "rankstudy_metrics.parquet")
        if self.geometry is not None:
            self.geometry.capture(state.global_step, self.profiler.current_ranks())
            pq.write_table(self.geometry.table(state.global_step), ckpt / "rankstudy_geometry.parquet")
        # Written last: the checkpoint is whole. It carries what the tables cannot say (rows without a gradient
        # look like NaN gradients once written).
        marker = {"step": state.global_step, "missing_rows": self.profiler.missing_rows}
        (ckpt / CHECKPOINT_MARKER).write_text(json.dumps(marker))
        if self.publish is not None:
            self.publish(ckpt)

    def restore(self, ckpt: Path) -> None:
        self.profiler.restore(pq.read_table(ckpt / "rankstudy_profile.parquet"))
        self.recorder.restore(pq.read_table(ckpt / "rankstudy_metrics.parquet"))
        if self.geometry is not None and (ckpt / "rankstudy_geometry.parquet").exists():
            self.geometry.restore(pq.read_table(ckpt / "rankstudy_geometry.parquet"))
        try:
            self.profiler.missing_rows = int(json.loads((ckpt / CHECKPOINT_MARKER).read_text())["missing_rows"])
        except (ValueError, KeyError, TypeError):
            pass  # a marker of an earlier version: the profiler's estimate (its NaN rows) stands


def checkpoint_step(path: Path) -> int | None:
    """The optimizer step of a ``checkpoint-<step>`` directory (None for any other name).

    >>> checkpoint_step(Path("runs/x/checkpoints/checkpoint-12")), checkpoint_step(Path("checkpoint-tmp"))
    (12, None)
    """
    suffix = path.name.removeprefix("checkpoint-")
    return int(suffix) if path.name.startswith("checkpoint-") and suffix.isdigit() else None


def publish_checkpoint(paths, ckpt: Path) -> None:
    """Upload a complete checkpoint to the study's object storage, its marker last, and drop the store's copies
    of the checkpoints training has since removed (``save_total_limit``). A local study: nothing to do."""
    if paths.remote is None:
        return
    marker = ckpt / CHECKPOINT_MARKER
    for path in sorted(p for p in ckpt.rglob("*") if p.is_file() and p != marker):
        paths.push(path)
    paths.push(marker)
    for name in paths.remote.subdirs(ckpt.parent.relative_to(paths.root)):
        if not (ckpt.parent / name).exists():
            paths.remote.delete(ckpt.parent.relative_to(paths.root) / name)


def fetch_latest_checkpoint(paths, checkpoint_dir: Path) -> None:
    """Before a resume from object storage: the staging copy keeps only checkpoints the store has whole (a local
    one may never have finished uploading), plus the store's newest complete one, downloaded if missing."""
    if paths.remote is None:
        return
    relative = checkpoint_dir.relative_to(paths.root)
    stored = [n for n in paths.remote.subdirs(relative) if checkpoint_step(Path(n)) is not None
              and paths.remote.exists(relative / n / CHECKPOINT_MARKER)]
    if checkpoint_dir.is_dir():
        for local in checkpoint_dir.iterdir():
            if local.name not in stored:
                shutil.rmtree(local, ignore_errors=True)
    newest = max(stored, key=lambda n: checkpoint_step(Path(n)), default=None)
    if newest is not None and not (checkpoint_dir / newest / CHECKPOINT_MARKER).exists():
        paths.pull(checkpoint_dir / newest)


def resume_checkpoint(paths, checkpoint_dir: Path, restart_reason: str | None) -> tuple[Path | None, str | None]:
    """The complete checkpoint an attempt resumes from (None: from step 0), and why it restarts instead when the
    strategy cannot resume (``restart_reason``); newer checkpoints, cut off mid-save, are dropped."""
    fetch_latest_checkpoint(paths, checkpoint_dir)  # a study in object storage: this node may not have it
    resume = latest_checkpoint(checkpoint_dir)
    if resume is not None and restart_reason is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        return None, f"restarted from step 0, not resumed from {resume.name}: {restart_reason}"
    if resume is not None:
        for stale in checkpoint_dir.iterdir():
            if (checkpoint_step(stale) or 0) > checkpoint_step(resume):
                shutil.rmtree(stale, ignore_errors=True)
    return resume, None


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest checkpoint that holds our tables; newer, incomplete ones (a crash mid-save) are ignored."""
    if not checkpoint_dir.is_dir():
        return None
    complete = [p for p in checkpoint_dir.iterdir()
                if checkpoint_step(p) is not None and (p / CHECKPOINT_MARKER).exists()]
    return max(complete, key=checkpoint_step, default=None)
