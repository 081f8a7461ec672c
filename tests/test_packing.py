"""Several runs per GPU: vLLM's share of the card, the memory plan, and engine starts one at a time.

The Ray part runs real actors on a CPU cluster whose one "GPU" is a custom resource: four runs take a quarter
of it each, run at the same time, and pass their engine start through the worker's lock one after another.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from orchestrator.core.errors import ConfigError
from orchestrator.core.gpu_packing import memory_plan, model_shape, runs_per_gpu, vllm_share
from orchestrator.core.plan import format_plan, make_plan
from orchestrator.resolve import load_study

DRIVER = textwrap.dedent("""
    import json, os, sys, time
    from orchestrator import scheduler
    from orchestrator.core.plan import make_plan
    from orchestrator.resolve import load_study

    def engine_starting_runner(config, spec, study_dir, report, control=None):
        from workers.engine_lock import engine_start_lock, lock_path

        began, starting = time.time(), {}
        report({"step": 1, "max_steps": 1})
        with engine_start_lock(starting, lock_path(directory=study_dir)):  # the worker's lock, this study's file
            time.sleep(1.0)  # an engine profiling memory
        time.sleep(3.0)  # training, alongside the other runs on the card
        return {"began": began, "ended": time.time(), **starting}

    study = load_study(sys.argv[1])
    scheduler.connect(num_cpus=2, resources={"fake_gpu": 1})
    states = scheduler.run_grid(make_plan(study), sys.argv[2], progress_interval_s=0.5, echo=lambda line: None,
                                runner=engine_starting_runner)
    scheduler.shutdown()
    print("RESULT " + json.dumps({rid: {"status": s.status, **(s.record or {})} for rid, s in states.items()}))
""")


@pytest.mark.ray
def test_four_runs_share_one_gpu_slot_and_start_their_engines_one_at_a_time(tmp_path, gsm8k_dir):
    config = tmp_path / "packed.yaml"
    config.write_text(textwrap.dedent(f"""
        name: packed
        model: {{name_or_path: never/loaded}}
        data: {{train: {gsm8k_dir}/train.jsonl, test: {gsm8k_dir}/test.jsonl}}
        lora: {{rank: 8}}
        allocation: {{r_min: 4, r_max: 16, random_range: [4, 12]}}
        grid: {{strategies: [uniform], seeds: [0, 1, 2, 3]}}
        resources: {{gpus_per_run: 0, cpus_per_run: 0.25, max_retries: 0, custom: {{fake_gpu: 0.25}}}}
    """))
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(config), str(tmp_path / "study")],
                         capture_output=True, text=True, env=env, timeout=300)
    result = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and result, out.stdout[-3000:] + out.stderr[-3000:]
    runs = json.loads(result[0].removeprefix("RESULT "))
    assert len(runs) == 4 and all(r["status"] == "completed" for r in runs.values())
    events = sorted([(r["began"], 1) for r in runs.values()] + [(r["ended"], -1) for r in runs.values()])
    running, peak = 0, 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak >= 3  # sharing the one slot at the same time (all four fit; actor start-up may stagger one)
    held = sorted((r["started_at"], r["finished_at"]) for r in runs.values())
    assert all(later[0] >= earlier[1] for earlier, later in zip(held, held[1:], strict=False)), held  # one at a time
    assert sum(r["waited_s"] > 0.5 for r in runs.values()) >= 2  # and the later ones did wait


def test_vllm_share_is_derived_from_the_run_share_unless_set(write_study_config):
    config = load_study(write_study_config(resources={"gpus_per_run": 0.25})).config
    assert runs_per_gpu(0.25) == 4 and vllm_share(config) == pytest.approx(0.25 * 0.3)
    whole = load_study(write_study_config(resources={"gpus_per_run": 1})).config
    assert vllm_share(whole) == pytest.approx(0.3)  # TRL's default for a whole GPU
    explicit = load_study(write_study_config(resources={"gpus_per_run": 0.5},
                                             grpo={"vllm_gpu_memory_utilization": 0.2})).config
    assert vllm_share(explicit) == 0.2


def test_plan_prints_the_memory_plan_and_refuses_a_packing_that_cannot_fit():
    study = load_study("configs/paper.yaml", ["resources.gpus_per_run=0.25", "resources.gpu_memory_gib=80"])
    text = format_plan(make_plan(study))
    assert "memory: 4 run(s) per GPU, card 80 GiB (config)" in text and ": fits" in text
    plan = memory_plan(study.config, shape=model_shape(study.config.model))
    assert plan.weights_gib == pytest.approx(1_543_714_304 * 2 / 2**30, abs=0.01)  # Qwen2.5-1.5B in bf16
    assert plan.per_run_gib == pytest.approx(plan.training_gib + 0.075 * 80, abs=0.02)
    with pytest.raises(ConfigError, match=r"^resources\.gpus_per_run: 8 runs per GPU need 8 x .* but the card has "
                                          r"80(\.0)? GiB \(config\)"):
        make_plan(load_study("configs/paper.yaml", ["resources.gpus_per_run=0.125", "resources.gpu_memory_gib=80"]))
    with pytest.raises(ConfigError, match=r"^grpo\.vllm_gpu_memory_utilization: 4 engines x 0\.3"):
        make_plan(load_study("configs/paper.yaml", ["resources.gpus_per_run=0.25",
                                                     "grpo.vllm_gpu_memory_utilization=0.3"]))
    with pytest.raises(ConfigError, match=r"^resources\.gpus_per_run: a run on more than one GPU takes whole GPUs"):
        load_study("configs/paper.yaml", ["resources.gpus_per_run=1.5"])
