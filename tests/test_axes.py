"""Study axes (issue 10): cells, their validation, run ids and dependencies per cell, growing a study by values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.core.contract import StudyPaths
from orchestrator.core.errors import ConfigError, StudyError
from orchestrator.core.plan import make_plan
from orchestrator.resolve import load_study
from orchestrator.study import write_study_yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # shipped configs name data relative to the repository root


def paper(*overrides):
    return load_study(REPO / "configs/paper.yaml", list(overrides))


def test_cells_are_the_product_of_the_axes_with_typed_values():
    config = paper("grid.axes={lora.rank: [16, 32], grpo.learning_rate: [1e-5, 1.0e-4]}")
    cells = config.cells
    assert [c.axes for c in cells] == [
        {"lora.rank": 16, "grpo.learning_rate": 1e-05}, {"lora.rank": 16, "grpo.learning_rate": 0.0001},
        {"lora.rank": 32, "grpo.learning_rate": 1e-05}, {"lora.rank": 32, "grpo.learning_rate": 0.0001}]
    assert [(c.config.lora.rank, c.config.grpo.learning_rate) for c in cells] == [
        (16, 1e-05), (16, 1e-04), (32, 1e-05), (32, 1e-04)]
    assert paper().cells[0].axes == {} and paper().cells[0].config == paper().config


def test_plan_has_every_run_per_cell_and_dependants_wait_for_their_own_cell():
    plain = make_plan(paper())
    plan = make_plan(paper("grid.axes={lora.rank: [16, 32]}"))
    assert len(plan.runs) == 2 * len(plain.runs) and len({r.run_id for r in plan.runs}) == len(plan.runs)
    for run in plan.runs:
        if run.depends_on:
            source = next(r for r in plan.runs if r.run_id == run.depends_on)
            assert (source.strategy, source.seed, source.axes) == ("uniform", run.seed, run.axes)
        assert plan.config_for(run).lora.rank == run.cell["lora.rank"]
    assert {r.run_id for r in plain.runs} == {r.run_id.split("__")[0] for r in plan.runs}


@pytest.mark.parametrize(("axes", "message"), [
    ("{lora.rank: [32, 30]}", r"^grid\.axes: cell \{lora\.rank: 30\}: lora\.rank: must be a positive multiple"),
    ("{lora.rnk: [8]}", r"^grid\.axes\.lora\.rnk: lora has no key 'rnk'; allowed: alpha, dropout, rank"),
    ("{grid.seeds: [[0], [1]]}", r"^grid\.axes\.grid\.seeds: grid cannot be an axis"),
    ("{lora.rank: []}", r"^grid\.axes\.lora\.rank: must list at least one value"),
    ("{grpo.learning_rate: [1e-5, 1.0e-5]}", r"^grid\.axes: cells .* are the same settings"),
    ("{warm_start.steps: [1, 2]}", r"^grid\.axes\.warm_start\.steps: warm_start is null in this config"),
    ("{lora.rank: [60]}", r"^grid\.axes: cell \{lora\.rank: 60\}: allocation\.random_range: \[16, 48\] must contain"),
])
def test_every_cell_is_validated_and_errors_name_the_cell(axes, message):
    with pytest.raises(ConfigError, match=message):
        paper(f"grid.axes={axes}")


def test_plan_json_lists_runs_with_axes_dependencies_and_resources():
    out = subprocess.run([sys.executable, "-m", "orchestrator", "plan", "configs/laptop.yaml", "--json",
                          "--set", "grid.axes={lora.rank: [8, 12]}"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    runs = json.loads(out.stdout)
    plain = json.loads(subprocess.run([sys.executable, "-m", "orchestrator", "plan", "configs/laptop.yaml", "--json"],
                                      cwd=REPO, capture_output=True, text=True).stdout)
    assert len(runs) == 2 * len(plain) == 18  # (4 strategies x 2 seeds + the base model) x 2 cells
    assert plain[0]["axes"] == {} and plain[2]["depends_on"] == "uniform-seed0"
    by_id = {r["run_id"]: r for r in runs}
    for run in runs:
        assert {"run_id", "strategy", "seed", "axes", "depends_on", "resources"} <= set(run)
        if run["depends_on"]:
            source = by_id[run["depends_on"]]
            assert (source["strategy"], source["seed"], source["axes"]) == ("uniform", run["seed"], run["axes"])
    assert by_id["reduced-seed1__rank-12"]["depends_on"] == "uniform-seed1__rank-12"
    assert by_id["reduced-seed1__rank-12"]["resources"] == {"num_gpus": 0.0, "num_cpus": 1.0, "custom": {}}


def test_a_study_grows_by_axis_values_but_not_by_new_axes(tmp_path):
    paths = StudyPaths(tmp_path)
    write_study_yaml(paths, paper("grid.axes={lora.rank: [16]}"))
    write_study_yaml(paths, paper("grid.axes={lora.rank: [32, 16]}"))
    assert yaml.safe_load(paths.study_yaml.read_text())["config"]["grid"]["axes"] == {"lora.rank": [16, 32]}
    before = paths.study_yaml.read_bytes()
    write_study_yaml(paths, paper("grid.axes={lora.rank: [16, 32]}"))
    assert paths.study_yaml.read_bytes() == before
    with pytest.raises(StudyError, match=r"axes are \['lora\.rank'\], the config's are \['lora\.rank', "
                                         r"'grpo\.beta'\]; a study may gain axis values but not axes"):
        write_study_yaml(paths, paper("grid.axes={lora.rank: [16], grpo.beta: [0.0, 0.05]}"))
    with pytest.raises(StudyError, match=r"axes are none, the config's are \['lora\.rank'\]"):
        other = StudyPaths(tmp_path / "plain")
        write_study_yaml(other, paper())
        write_study_yaml(other, paper("grid.axes={lora.rank: [16]}"))


def test_a_study_yaml_of_an_earlier_version_still_matches(tmp_path):
    # study.yaml written before task/family/axes existed: the same study under this version's defaults.
    paths = StudyPaths(tmp_path)
    config = paper()
    write_study_yaml(paths, config)
    record = yaml.safe_load(paths.study_yaml.read_text())
    for key in ("task",):
        record["config"]["data"].pop(key)
    record["config"]["grid"].pop("axes")
    record["config"]["rewards"] = None
    paths.study_yaml.write_text(yaml.safe_dump(record, sort_keys=False))
    before = paths.study_yaml.read_bytes()
    write_study_yaml(paths, config)  # accepted: nothing differs once the old record is resolved
    assert paths.study_yaml.read_bytes() == before


def test_axis_values_are_recorded_typed_so_growth_compares_like_with_like(tmp_path):
    paths = StudyPaths(tmp_path)
    write_study_yaml(paths, paper("grid.axes={grpo.learning_rate: [1e-5]}"))  # YAML 1.1 reads 1e-5 as a string
    write_study_yaml(paths, paper("grid.axes={grpo.learning_rate: [1.0e-5, 1.0e-4]}"))
    assert yaml.safe_load(paths.study_yaml.read_text())["config"]["grid"]["axes"] == {
        "grpo.learning_rate": [1e-05, 0.0001]}


def test_a_task_axis_gives_each_cell_its_own_tasks_prompt_and_rewards():
    from workers.tasks import register_task, unregister_task
    from workers.tasks.gsm8k import GSM8K

    @register_task
    class Terse(GSM8K):
        name = "terse_test"
        system_prompt = "Answer with <think> and <answer> tags, briefly."
        rewards = {"format": GSM8K.rewards["format"]}

    try:
        cells = paper("grid.axes={data.task: [gsm8k, terse_test]}").cells
    finally:
        unregister_task("terse_test")
    assert [(c.config.data.task, c.config.rewards) for c in cells] == [("gsm8k", ("format", "correctness")),
                                                                       ("terse_test", ("format",))]
    assert cells[1].config.data.system_prompt == Terse.system_prompt != cells[0].config.data.system_prompt
