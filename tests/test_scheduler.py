"""The scheduler on its own, with a stub runner: dependency order, slot limits, the worker environment.

The stub (any picklable ``runner(config, spec, study_dir, report, control)``) replaces the GRPO worker inside each real
Ray actor, so this checks what the driver does in seconds; tests/test_study.py checks it with real runs.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.ray]

# Runs as a script, so the stub lives in __main__ and Ray pickles it by value into the actors.
DRIVER = textwrap.dedent("""
    import json, os, sys, time
    from orchestrator import scheduler
    from orchestrator.core.plan import make_plan
    from orchestrator.resolve import load_study

    def sleeping_runner(config, spec, study_dir, report, control=None):
        started = time.time()
        report({"step": 1, "max_steps": 1})
        time.sleep(2.0)
        return {"started": started, "finished": time.time(), "pid": os.getpid(),
                "unbuffered": os.environ.get("PYTHONUNBUFFERED"),
                "tokenizers": os.environ.get("TOKENIZERS_PARALLELISM")}

    study = load_study(sys.argv[1])
    scheduler.connect(num_cpus=2, resources={"slot": 2})
    lines = []
    states = scheduler.run_grid(make_plan(study), sys.argv[2], progress_interval_s=0.5,
                                echo=lines.append, runner=sleeping_runner)
    scheduler.shutdown()
    print("RESULT " + json.dumps({"lines": lines, "runs": {
        rid: {"status": s.status, "depends_on": s.spec.depends_on, **(s.record or {})} for rid, s in states.items()}}))
""")


@pytest.fixture(scope="module")
def stub_grid(tmp_path_factory, gsm8k_dir):
    tmp = tmp_path_factory.mktemp("scheduler")
    config = tmp / "grid.yaml"
    config.write_text(textwrap.dedent(f"""
        name: stub-grid
        model: {{name_or_path: never/loaded}}
        data: {{train: {gsm8k_dir}/train.jsonl, test: {gsm8k_dir}/test.jsonl}}
        lora: {{rank: 8}}
        allocation: {{r_min: 4, r_max: 16, random_range: [4, 12]}}
        grid: {{strategies: [uniform, proportional, random, reduced], seeds: [0, 1]}}
        resources: {{gpus_per_run: 0, cpus_per_run: 0.5, max_retries: 0, custom: {{slot: 1}}}}
    """))
    (tmp / "driver.py").write_text(DRIVER)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    for key in ("RAY_ADDRESS", "TOKENIZERS_PARALLELISM", "PYTHONUNBUFFERED"):  # so only the scheduler sets them
        env.pop(key, None)
    out = subprocess.run([sys.executable, str(tmp / "driver.py"), str(config), str(tmp / "study")],
                         capture_output=True, text=True, env=env, timeout=300)
    result = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and result, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(result[0].removeprefix("RESULT "))


def test_every_run_completes_once_in_its_own_actor_process(stub_grid):
    runs = stub_grid["runs"]
    assert sorted(runs) == sorted(f"{s}-seed{n}" for s in ("uniform", "proportional", "random", "reduced")
                                  for n in (0, 1))
    assert all(r["status"] == "completed" for r in runs.values())
    assert len({r["pid"] for r in runs.values()}) == len(runs)  # one actor (process) per run
    assert sum("submitted as actor grpo:" in line for line in stub_grid["lines"]) == len(runs)


def test_dependants_start_only_after_their_uniform_run_finished(stub_grid):
    runs = stub_grid["runs"]
    dependants = {rid: r for rid, r in runs.items() if r["depends_on"]}
    assert sorted(dependants) == ["proportional-seed0", "proportional-seed1", "reduced-seed0", "reduced-seed1"]
    for rid, run in dependants.items():
        assert run["depends_on"] == f"uniform-seed{rid[-1]}"
        assert run["started"] >= runs[run["depends_on"]]["finished"], rid


def test_never_more_runs_at_once_than_slots(stub_grid):
    events = sorted([(r["started"], 1) for r in stub_grid["runs"].values()]
                    + [(r["finished"], -1) for r in stub_grid["runs"].values()])
    running, peak = 0, 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak <= 2  # the slot limit (how many overlap below it depends on actor start-up under load)


def test_actors_get_the_worker_environment(stub_grid):
    # Applied by RunActor itself (not a Ray runtime_env, which would force a fresh worker process per run);
    # the driver's environment has neither variable.
    for run in stub_grid["runs"].values():
        assert (run["tokenizers"], run["unbuffered"]) == ("false", "1")


# RunActor is a plain class: run it in a fresh process (no Ray) to see what an actor process imports.
ACTOR_PROCESS = textwrap.dedent("""
    import importlib.util, json, sys
    from orchestrator.core.plan import make_plan
    from orchestrator.resolve import load_study
    from orchestrator.scheduler import RunActor

    def runner(config, spec, study_dir, report, control=None):
        if config.grpo.use_vllm:
            return {"vllm_found": importlib.util.find_spec("vllm") is not None}
        import trl.generation  # what importing GRPOTrainer reaches; it imports vLLM whenever vLLM is found
        from trl.import_utils import is_vllm_available
        return {"vllm_found": importlib.util.find_spec("vllm") is not None, "trl_sees_vllm": is_vllm_available(),
                "vllm_imported": sys.modules.get("vllm") is not None}

    study = load_study(sys.argv[1], [f"grpo.use_vllm={sys.argv[2]}"])
    print("RESULT " + json.dumps(RunActor(study.config, sys.argv[3], runner).run(make_plan(study).runs[0])))
""")


@pytest.mark.parametrize("use_vllm", [False, True])
def test_an_hf_path_actor_never_imports_vllm(tmp_path, use_vllm):
    pytest.importorskip("vllm")  # the [cpu] extra; without vLLM installed there is nothing to keep out
    config = tmp_path / "run.yaml"
    config.write_text("name: actor-imports\nmodel: {name_or_path: never/loaded}\ndata: {task: arith}\n"
                      "lora: {rank: 8}\nallocation: {r_min: 4, r_max: 16, random_range: [4, 12]}\n"
                      "grid: {strategies: [uniform], seeds: [0]}\n")
    (tmp_path / "actor.py").write_text(ACTOR_PROCESS)
    out = subprocess.run([sys.executable, str(tmp_path / "actor.py"), str(config), str(use_vllm).lower(),
                          str(tmp_path / "study")], capture_output=True, text=True, timeout=300)
    result = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and result, out.stdout[-3000:] + out.stderr[-3000:]
    seen = json.loads(result[0].removeprefix("RESULT "))
    if use_vllm:
        assert seen == {"vllm_found": True}  # a vLLM run's process keeps the engine available
    else:
        assert seen == {"vllm_found": False, "trl_sees_vllm": False, "vllm_imported": False}
