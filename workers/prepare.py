"""The study's base model, before the grid: load as given, or build a small one offline, then warm-start it.

``prepare_base_model(config)`` returns the directory every GRPO run loads, and the SFT gradient profile when
there was a warm start. Both steps are cached by content under ``config.cache_dir`` and reused by later
studies and later invocations:

- ``model.build``: :func:`workers.local_model.build_local_model` trains a BPE tokenizer on the task's training
  questions/solutions and builds a randomly initialised model of ``model.build.family`` (all 7 projections)
  with the chat template;
- ``warm_start``: :func:`workers.warmstart.warm_start` teaches the <think>/<answer> format with TRL's
  SFTTrainer so GRPO groups have unequal rewards (a random model never earns one), profiling every step.

Runs without Ray (tests, a laptop); the scheduler runs it as one Ray task with a run's resources.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

from orchestrator.core.config import StudyConfig
from orchestrator.core.contract import run_id
from orchestrator.core.roles import SFT
from orchestrator.core.storage import RemoteDir, is_uri, join_uri
from workers.tasks import get_task
from workers.tracking import tracker_args, tracking_environment


@dataclasses.dataclass(frozen=True)
class PreparedModel:
    model_dir: str
    sft_profile: str | None = None  # the warm start's profile parquet (strategy "sft"), if any


def prepare_base_model(config: StudyConfig, study_dir: str | None = None) -> PreparedModel:
    """The cell's base model: built (``model.build``) and warm-started (``warm_start``), each cached by content.
    With ``study_dir``, a warm start that trains reports to the study's experiment tracker as ``sft-seed<s>``.
    With ``cache_dir`` in object storage, each entry is looked up there first and uploaded once made, and the
    returned locations are its URIs (every node's runs load them from there: :func:`load_model_and_tokenizer`)."""
    remote = RemoteDir.parse(config.cache_dir) if is_uri(config.cache_dir) else None
    cache = remote.staging if remote else Path(config.cache_dir)

    def shared(local: Path) -> str:  # where every node finds an entry
        return join_uri(config.cache_dir, local.relative_to(cache)) if remote else str(local)

    model_dir, model_location = config.model.name_or_path, config.model.name_or_path
    task = get_task(config.data.task)
    if config.model.build is not None:
        from workers.local_model import BUILD_RECORD, build_local_model

        build = config.model.build
        entry = Path("models") / build.directory_name
        made = remote is not None and not _fetch_entry(remote, entry, BUILD_RECORD)
        texts = task.corpus(task.dataset(config.data, "train"))
        model_dir = str(build_local_model(cache / entry, train_texts=texts, **dataclasses.asdict(build)))
        if made:
            remote.push(entry, last=BUILD_RECORD)
        model_location = shared(cache / entry)
    if config.warm_start is None:
        return PreparedModel(model_location)
    from workers.warmstart import MARKER, SFT_PROFILE, warm_start

    w = config.warm_start
    run_name = run_id(SFT, w.seed)
    track = study_dir is not None and config.tracking.enabled
    with (tracking_environment(config.tracking, Path(study_dir), config.name, run_name, {"strategy": SFT, "seed": w.seed})
          if track else contextlib.nullcontext()):
        entry = warm_start(
            Path(model_dir), config.data, cache / "warmstart", steps=w.steps, learning_rate=w.learning_rate,
            batch_size=w.batch_size, max_length=w.max_length, seed=w.seed, limit=w.limit,
            target_modules=config.lora.target_modules, plain_answer_pattern=w.plain_answer_pattern,
            plain_answer_share=w.plain_answer_share,
            tracker=tracker_args(config.tracking, run_name, config.name) if track else None,
            fetch=(lambda local: _fetch_entry(remote, local.relative_to(cache), MARKER)) if remote else None,
            publish=(lambda local: remote.push(local.relative_to(cache), last=MARKER)) if remote else None,
        )
    return PreparedModel(shared(entry), shared(entry / SFT_PROFILE))


def _fetch_entry(remote: RemoteDir, entry: Path, record: str) -> bool:
    """Download a cache entry the store holds whole (its record file there); whether it did."""
    if not remote.exists(entry / record):
        return False
    return remote.pull(entry)
