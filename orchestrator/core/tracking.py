"""Experiment trackers (config section ``tracking``): the backends TRL reports to, and what each one needs.

    tracking: {backend: mlflow, project: grpo-rank-study}

Every GRPO run and the SFT warm start pass ``backend`` to TRL's ``report_to`` (transformers' own callbacks do the
logging), named by their run id and grouped by the study (each backend's way: below), with the run's strategy,
seed and cell axes as tags or config; beside TRL's scalars they log the profiler's per-layer shares of the LoRA
gradient at every logging step (``profile/layer_share/<layer>``). Nothing is sent over the network unless the
user asks: TensorBoard and MLflow write under ``uri`` (default ``DIR/tracking/<backend>``), W&B runs offline
unless ``online: true``, Trackio keeps its local store and creates no Space.

=============  ==================================  =====================================================
backend        grouped by the study as              where it writes by default
=============  ==================================  =====================================================
tensorboard    one log directory per run under it   DIR/tracking/tensorboard/<run_id>
mlflow         an experiment named ``project``      file store DIR/tracking/mlflow (``uri``: any tracking URI)
wandb          project ``project``, group the study offline runs under DIR/tracking/wandb
trackio        project ``project``                  Trackio's local store (TRACKIO_DIR, else its default)
=============  ==================================  =====================================================

Each backend is an optional extra (``pip install 'rankstudy[mlflow]'``); a backend whose package is missing is
one line at start-up (:func:`check_installed`), before any model loads. Pure and torch-free.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from orchestrator.core.errors import ConfigError
from orchestrator.core.typed_yaml import documented

NONE = "none"
# backend -> the Python module it needs (the rankstudy extra has the backend's name); TRL's report_to name is the
# backend's name.
TRACKING_BACKENDS = {NONE: None, "tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb",
                     "trackio": "trackio"}


@dataclass(frozen=True)
class TrackingSettings:
    backend: str = documented(
        "Experiment tracker every run reports to through TRL's report_to: none, tensorboard, mlflow, wandb or "
        "trackio (each an optional extra: pip install 'rankstudy[<backend>]').", default=NONE)
    project: str | None = documented(
        "The study's group in the tracker: MLflow experiment, W&B and Trackio project (null = the study's name).",
        default=None)
    uri: str | None = documented(
        "TensorBoard's log root or MLflow's tracking URI (null = DIR/tracking/<backend>, local files).", default=None)
    online: bool = documented("W&B only: sync runs to the W&B server (false = offline mode: nothing leaves the "
                              "machine; `wandb sync` uploads later).", default=False)

    def __post_init__(self):
        if self.backend not in TRACKING_BACKENDS:
            raise ConfigError(f"backend: must be one of {', '.join(TRACKING_BACKENDS)}, got {self.backend!r}")
        if self.uri is not None and self.backend not in ("tensorboard", "mlflow"):
            raise ConfigError(f"uri: only tensorboard and mlflow take one (backend is {self.backend})")
        if self.online and self.backend != "wandb":
            raise ConfigError(f"online: only the wandb backend has an online mode (backend is {self.backend})")

    @property
    def enabled(self) -> bool:
        return self.backend != NONE


def report_to(settings: TrackingSettings) -> list[str]:
    """TRL's ``report_to`` for these settings.

    >>> report_to(TrackingSettings()), report_to(TrackingSettings(backend="mlflow"))
    ([], ['mlflow'])
    """
    return [settings.backend] if settings.enabled else []


def check_installed(settings: TrackingSettings) -> None:
    """One line naming the extra when the backend's package is not importable here."""
    module = TRACKING_BACKENDS[settings.backend]
    if module is not None and importlib.util.find_spec(module) is None:
        raise ConfigError(f"tracking.backend: {settings.backend} needs the {module} package, which is not installed: "
                          f"pip install 'rankstudy[{settings.backend}]' (or set tracking.backend: none)")
