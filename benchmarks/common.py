"""Shared by the worker benchmarks: the laptop study's config on its prepared (built + warm-started) model."""

from __future__ import annotations

import dataclasses
import os
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAPTOP_CONFIG = REPO / "configs" / "laptop.yaml"


def laptop_config(overrides: list[str] = ()):
    """configs/laptop.yaml with ``overrides``, its model built and warm-started (cached under its cache_dir).

    The returned config loads the prepared model directly (no build, no warm start), as every run of the
    study does once the driver has prepared it.
    """
    from orchestrator.resolve import load_study
    from workers.prepare import prepare_base_model

    os.chdir(REPO)  # the config's paths are relative to the repository root, as under `make run`
    config = load_study(str(LAPTOP_CONFIG), list(overrides)).config
    prepared = prepare_base_model(config)
    model = dataclasses.replace(config.model, name_or_path=prepared.model_dir, build=None)
    return dataclasses.replace(config, model=model, warm_start=None)


def set_up_uniform_run(config, study_dir: str):
    """A study run of ``config`` (uniform strategy, seed 0), set up exactly as a worker sets it up, not trained."""
    from orchestrator.core.plan import RunSpec
    from orchestrator.core.roles import REFERENCE
    from workers.run import GRPORun

    run = GRPORun(config, RunSpec(REFERENCE, 0, num_gpus=0, num_cpus=1), study_dir)
    run.setup()
    return run


def spread(values: list[float], digits: int = 4) -> dict:
    """Median, min and max of repeated measurements (the benchmarks' standard summary)."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values)}
