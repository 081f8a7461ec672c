"""The environment of every process that trains, prepares or evaluates: threads, offline flags, task modules, vLLM."""

from __future__ import annotations

import os

from orchestrator.core.config import StudyConfig


def worker_env(config: StudyConfig) -> dict[str, str]:
    threads = max(1, int(config.resources.cpus_per_run))
    env = {
        # Threads = the CPUs Ray gave the run; more only oversubscribes (2.75x slower with 2 on 2 shared cores).
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    from workers.tasks.registry import TASK_MODULES_ENV  # no heavy import

    # Passed on because the workers of a cluster's nodes were not started from the driver's environment.
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "VLLM_CPU_KVCACHE_SPACE", TASK_MODULES_ENV):
        if key in os.environ:
            env[key] = os.environ[key]
    if config.grpo.use_vllm:
        from workers.generation import vllm_environment

        env = {**vllm_environment(on_cpu=config.resources.gpus_per_run == 0), **env}
    return env
