"""The rank-invariant importance: ||dL/dW||_F of each frozen weight, checked against autograd's own dL/dW."""

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from dashboards.analysis import summarize
from dashboards.analysis.findings import paper_comparison
from dashboards.analysis.schema import (
    CellSummary,
    ControlStrategy,
    NormalizedControl,
    ProfileLandscape,
    StrategyResult,
    WeightGradientControl,
)
from orchestrator.cli import main
from orchestrator.core.config import load_config
from orchestrator.core.contract import PROFILE_SCHEMA, StudyPaths
from orchestrator.core.errors import ConfigError, StudyError
from orchestrator.core.importance import importance_from_profile
from orchestrator.core.plan import RunSpec
from orchestrator.core.projections import PROJECTION_MODULES
from orchestrator.resolve import load_study
from tests.fixtures import variance_task
from tests.test_analysis import amplification_study
from workers.model import discover_layers
from workers.run import execute_run
from workers.weight_gradient import WeightGradientMeter


def _peft_model(model_dir, rank: int, alpha: int, nonzero_b: bool = True):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    layout = discover_layers(base, PROJECTION_MODULES)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                            target_modules=list(PROJECTION_MODULES)))
    if nonzero_b:  # a merged point W + s B A away from W, as after some training
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(1))
    return model, layout


def _loss(model):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 1000, (3, 11), generator=g)
    logits = model(input_ids=ids).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _autograd_weight_norms(model, layout) -> list[float]:
    """The reference: let autograd compute dL/dW of every frozen weight (a full fine-tune's gradient)."""
    base = model.get_base_model()
    weights = [base.get_submodule(layout.path(layer, m)).get_base_layer().weight
               for layer in range(layout.num_layers) for m in layout.modules]
    for w in weights:
        w.requires_grad_(True)
    try:
        grads = torch.autograd.grad(_loss(model), weights)
    finally:
        for w in weights:
            w.requires_grad_(False)
    return [float(torch.linalg.norm(g)) for g in grads]


@pytest.mark.parametrize("checkpointing", [None, "reentrant", "non-reentrant"])
def test_the_meter_matches_autograds_weight_gradient(tiny_model_dir, checkpointing):
    model, layout = _peft_model(tiny_model_dir, rank=4, alpha=8)
    expected = _autograd_weight_norms(model, layout)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": checkpointing == "reentrant"})
        model.enable_input_require_grads()
    meter = WeightGradientMeter(model, layout, every=1, checkpointing=checkpointing is not None)
    meter.arm(1)
    _loss(model).backward()
    got = meter.collect(1)
    assert len(got) == layout.num_layers * len(layout.modules) and not meter.notes
    assert got == pytest.approx(expected, rel=1e-4)
    assert meter.collect(1) is None  # disarmed: a step is collected once


def test_it_does_not_depend_on_the_lora_rank_or_scaling_where_the_lora_gradient_does(tiny_model_dir):
    # At the adapter's init (B = 0) every rank and scale gives the same merged weights, so the same dL/dW; the
    # LoRA gradient (what Eq. 2 sums) grows with rank and with alpha.
    weight, lora = {}, {}
    for rank, alpha in ((2, 4), (16, 32), (16, 16)):
        model, layout = _peft_model(tiny_model_dir, rank=rank, alpha=alpha, nonzero_b=False)
        meter = WeightGradientMeter(model, layout, every=1)
        meter.arm(1)
        _loss(model).backward()
        weight[rank, alpha] = meter.collect(1)
        lora[rank, alpha] = math.sqrt(sum(float(p.grad.square().sum()) for p in model.parameters()
                                          if p.grad is not None))
    assert weight[2, 4] == pytest.approx(weight[16, 32], rel=1e-5) == weight[16, 16]
    assert lora[16, 32] > 1.5 * lora[2, 4] and lora[16, 32] > 1.5 * lora[16, 16]


def test_unarmed_steps_cost_nothing_and_a_module_run_twice_is_nan_not_wrong(tiny_model_dir):
    model, layout = _peft_model(tiny_model_dir, rank=4, alpha=8)
    meter = WeightGradientMeter(model, layout, every=3)
    assert [meter.due(s) for s in (1, 2, 3, 6)] == [False, False, True, True]
    _loss(model).backward()  # not armed: nothing kept
    assert meter.collect(1) is None and not meter._inputs and not meter._grads
    meter.arm(3)
    (_loss(model) + _loss(model)).backward()  # two forwards in one step: the cross terms are unknown
    values = meter.collect(3)
    assert all(math.isnan(v) for v in values)
    assert len(meter.notes) == 1 and "more than once" in meter.notes[0]
    meter.remove()
    meter.arm(4)
    _loss(model).backward()
    assert all(math.isnan(v) for v in meter.collect(4)) and "got no gradient" in meter.notes[-1]


def test_config_refuses_weight_grad_importance_without_its_measurement():
    with pytest.raises(ConfigError, match="allocation.importance: weight_grad needs .*weight_gradient_every"):
        load_config("configs/laptop.yaml", ["allocation.importance=weight_grad"])
    with pytest.raises(ConfigError, match="must be one of lora_grad, weight_grad"):
        load_config("configs/laptop.yaml", ["allocation.importance=weight"])
    with pytest.raises(ConfigError, match="weight_gradient_every: must be >= 0"):
        load_config("configs/laptop.yaml", ["profile.weight_gradient_every=-1"])
    config = load_config("configs/laptop.yaml", ["allocation.importance=weight_grad", "profile.weight_gradient_every=4"])
    assert config.allocation.importance == "weight_grad"


def _profile(path, weight):
    rows = [(step, layer) for step in (1, 2) for layer in range(2)]
    pq.write_table(pa.table({
        "run_id": ["r"] * 4, "strategy": ["uniform"] * 4, "seed": [0] * 4, "step": [s for s, _ in rows],
        "layer": [layer for _, layer in rows], "module": ["q_proj"] * 4, "rank": [8] * 4,
        "grad_norm": [1.0, 3.0, 1.0, 3.0], "nonfinite": [False] * 4, "component": ["total"] * 4,
        "weight_grad_norm": weight}, schema=PROFILE_SCHEMA), path)
    return str(path)


def test_importance_reads_the_measure_it_is_asked_for(tmp_path, capsys):
    measured = _profile(tmp_path / "a.parquet", [None, None, 5.0, 1.0])  # only step 2 measured
    assert importance_from_profile(measured).values == [1.0, 3.0]
    assert importance_from_profile(measured, measure="weight_grad").values == [5.0, 1.0]  # nulls are not zeros
    for measure, expected in (("lora_grad", lambda r: r[0] < r[1]), ("weight_grad", lambda r: r[0] > r[1])):
        assert main(["allocate", "--strategy", "proportional", "--rank", "8", "--importance", measured,
                     "--measure", measure]) == 0
        assert expected(json.loads(capsys.readouterr().out)), measure
    unmeasured = _profile(tmp_path / "b.parquet", [None] * 4)
    with pytest.raises(StudyError, match="no weight_grad_norm values .* profile.weight_gradient_every"):
        importance_from_profile(unmeasured, measure="weight_grad")


def test_a_run_records_the_weight_gradient_on_its_measured_steps(write_study_config, tmp_path):
    # Decomposition on the same step: its extra passes must not reach the meter (a repeat would make it NaN).
    config = load_study(write_study_config(profile={"weight_gradient_every": 2, "decompose_every": 2},
                                           grpo={"max_steps": 2, "checkpoint_every": 1},
                                           data={"task": variance_task.NAME}, rewards=variance_task.REWARDS)).config
    record = execute_run(config, RunSpec("uniform", 0, num_gpus=0, num_cpus=1), tmp_path)
    frame = pq.read_table(StudyPaths(tmp_path).table("profiles", record.run_id)).to_pandas()
    total = frame[frame["component"] == "total"]
    measured = total[total["step"] == 2]["weight_grad_norm"]
    assert len(measured) == record.num_layers * len(config.lora.target_modules)
    assert (measured > 0).all() and measured.notna().all()
    assert total[total["step"] == 1]["weight_grad_norm"].isna().all()
    assert frame[frame["component"] != "total"]["weight_grad_norm"].isna().all()
    assert record.timings["weight_gradient_s"] > 0 and not any("weight_gradient" in w for w in record.warnings)
    path = str(StudyPaths(tmp_path).table("profiles", record.run_id))
    assert len(importance_from_profile(path, measure="weight_grad").values) == record.num_layers


def _add_weight_column(study, run_id: str, per_layer: list[float], every: int = 2) -> None:
    """Give a hand-written profile weight_grad_norm values on every ``every``-th step (null on the others)."""
    path = study / "profiles" / f"{run_id}.parquet"
    frame = pd.read_parquet(path)
    values = np.array(per_layer, dtype=float)[frame["layer"].to_numpy()]
    frame["weight_grad_norm"] = np.where(frame["step"] % every == 0, values, np.nan)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    measured = pa.array(frame["step"].to_numpy() % every == 0)
    table = table.set_column(table.column_names.index("weight_grad_norm"), "weight_grad_norm",
                             pc.if_else(measured, table.column("weight_grad_norm"), pa.scalar(None, pa.float64())))
    pq.write_table(table, path)


def test_the_analysis_reports_the_weight_gradient_control_and_whether_amplification_survives_it(tmp_path):
    # The LoRA norms carry the amplification (r = 0.98 / 0.87, tests/test_analysis.py); the frozen weights'
    # gradient of proportional falls with its allocated rank (ranks 16/32/48): shares .5/.33/.17 and
    # .44/.33/.22, a shift of exactly -1 correlation with rank in both seeds. Uniform's is flat.
    amplification_study(tmp_path)
    for seed in (0, 1):
        _add_weight_column(tmp_path, f"uniform-seed{seed}", [1.0, 1.0, 1.0])
    _add_weight_column(tmp_path, "proportional-seed0", [3.0, 2.0, 1.0])
    _add_weight_column(tmp_path, "proportional-seed1", [4.0, 3.0, 2.0])
    summary, _ = summarize(tmp_path)
    weight = summary["normalized_control"]["weight_gradient"]
    assert weight["n_runs"] == 4 and weight["landscape"]["max_min_ratio"] == pytest.approx(1.0)
    assert weight["strategies"]["proportional"]["rank_shift_corr"] == pytest.approx(-1.0)
    assert weight["strategies"]["proportional"]["max_min_ratio"] == pytest.approx((3 / 6 + 4 / 9) / (1 / 6 + 2 / 9))
    assert summary["strategies"]["proportional"]["rank_shift_corr"] > 0.8  # the LoRA norms still amplify
    found = " ".join(summary["findings"])
    assert "Control, frozen-weight gradient ||dL/dW|| (rank-invariant): rank vs share shift r = proportional " \
           "-1.00; the amplification weakens or vanishes." in found
    comparison = paper_comparison(CellSummary(strategies={k: StrategyResult(**{f: v for f, v in s.items()
                                                                               if f in ("max_min_ratio", "rank_shift_corr")})
                                                          for k, s in summary["strategies"].items()},
                                              normalized_control=NormalizedControl(
                                                  weight_gradient=WeightGradientControl(
                                                      ProfileLandscape(), {"proportional": ControlStrategy(
                                                          rank_shift_corr=-1.0)}))), {})[0]
    assert "allocated rank no longer predicts the shift: the amplification is the LoRA gradient's dependence" \
           in comparison


def test_profiles_without_the_measurement_have_no_weight_gradient_control(tmp_path):
    amplification_study(tmp_path)  # hand-written profiles without the column, as before it existed
    summary, warnings = summarize(tmp_path)
    assert summary["normalized_control"]["weight_gradient"] is None
    assert not any("weight" in w for w in warnings)
