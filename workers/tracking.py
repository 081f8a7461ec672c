"""A run's side of experiment tracking (the settings: orchestrator/core/tracking.py).

transformers' tracker callbacks, which TRL's ``report_to`` turns on, take their destination, grouping and tags
from environment variables (``TENSORBOARD_LOGGING_DIR``, ``MLFLOW_*``, ``WANDB_*``) read when the trainer is
built and when training begins; :func:`tracking_environment` sets them for one run in its own process and
restores them after, so two runs never see each other's. :func:`tracker_args` gives the TrainingArguments that
name the run (``run_name``) and keep Trackio local. The per-layer shares are added to the logs by
:class:`workers.trainer.LogLayerShares`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from orchestrator.core.tracking import TrackingSettings, report_to


def tracker_args(settings: TrackingSettings, run_name: str, study_name: str) -> dict[str, Any]:
    """TrainingArguments for the tracker: report_to, the run's name, and Trackio's project without any Space."""
    args: dict[str, Any] = {"report_to": report_to(settings), "run_name": run_name}
    if settings.backend == "trackio":
        args.update(project=settings.project or study_name, trackio_space_id=None, trackio_static_space_id=False)
    return args


def tracker_environment(settings: TrackingSettings, study_dir: Path, study_name: str, run_name: str,
                        tags: Mapping[str, Any]) -> dict[str, str]:
    """The environment variables that point the backend's callback at this run (empty for none).

    >>> env = tracker_environment(TrackingSettings(backend="mlflow"), Path("/s"), "study", "uniform-seed0",
    ...                           {"strategy": "uniform", "seed": 0})
    >>> env["MLFLOW_TRACKING_URI"], env["MLFLOW_EXPERIMENT_NAME"], json.loads(env["MLFLOW_TAGS"])["study"]
    ('file:///s/tracking/mlflow', 'study', 'study')
    """
    backend, project = settings.backend, settings.project or study_name
    tags = {"study": study_name, **{str(k): str(v) for k, v in tags.items()}}
    root = Path(study_dir) / "tracking" / backend
    if backend == "tensorboard":
        return {"TENSORBOARD_LOGGING_DIR": str(Path(settings.uri or root) / run_name)}
    if backend == "mlflow":
        uri = settings.uri or root.resolve().as_uri()
        env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": project, "MLFLOW_TAGS": json.dumps(tags)}
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 refuses its file store (maintenance mode) unless told; a database store needs SQLAlchemy,
            # which mlflow-skinny lacks. The files stay readable: `mlflow ui --backend-store-uri <uri>`.
            env["MLFLOW_ALLOW_FILE_STORE"] = "true"
        return env
    if backend == "wandb":
        return {"WANDB_PROJECT": project, "WANDB_RUN_GROUP": study_name, "WANDB_NAME": run_name,
                "WANDB_TAGS": ",".join(f"{k}:{v}" for k, v in tags.items()),
                "WANDB_MODE": "online" if settings.online else "offline", "WANDB_DIR": str(root)}
    if backend == "trackio":
        return {"TRACKIO_DIR": str(root)} if "TRACKIO_DIR" not in os.environ else {}
    return {}


@contextlib.contextmanager
def tracking_environment(settings: TrackingSettings, study_dir: Path, study_name: str, run_name: str,
                         tags: Mapping[str, Any]) -> Iterator[None]:
    """Within the block, the backend's environment points at this run; the previous values come back after."""
    env = tracker_environment(settings, study_dir, study_name, run_name, tags)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
