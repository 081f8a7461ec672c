"""Gradient profiler: per-module norms of lora_A+lora_B (or full weights), before clipping, non-finite kept."""

import math
from types import SimpleNamespace

import pytest
import torch

from orchestrator.core.config import LoraSettings
from tests.fixtures.tiny import apply_lora
from workers.compat import clip_gradients
from workers.model import discover_layers, load_model_and_tokenizer
from workers.profiler import GradientProfiler, ProfileBeforeClipping, RunLabels

LABELS = RunLabels("uniform-seed0", "uniform", 0)


@pytest.fixture
def lora_model(tiny_model_dir):
    model, _ = load_model_and_tokenizer(str(tiny_model_dir))
    layout = discover_layers(model, LoraSettings().target_modules)
    ranks = [4, 8, 4, 8][: layout.num_layers]
    peft_model, _ = apply_lora(model, layout, ranks, LoraSettings(rank=8, alpha=16), seed=0)
    generator = torch.Generator().manual_seed(1)
    for p in peft_model.parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=generator)
    return peft_model, layout, ranks


def test_lora_norms_are_a_and_b_together_per_layer_and_module(lora_model):
    model, layout, ranks = lora_model
    profiler = GradientProfiler.for_lora(model, layout, ranks, LABELS)
    profiler.capture(1)
    profiler.capture(1)  # a repeat of the same step is ignored
    table = profiler.table().to_pandas()
    assert len(table) == layout.num_layers * len(layout.modules)
    named = dict(model.named_parameters())
    for row in table.itertuples():
        path = layout.path(row.layer, row.module)
        a = named[f"base_model.model.{path}.lora_A.default.weight"].grad
        b = named[f"base_model.model.{path}.lora_B.default.weight"].grad
        assert row.grad_norm == pytest.approx(math.sqrt(a.norm() ** 2 + b.norm() ** 2), rel=1e-6)
        assert row.rank == ranks[row.layer] and row.step == 1 and not row.nonfinite


def test_non_finite_norms_are_kept_and_flagged(lora_model):
    model, layout, ranks = lora_model
    target = dict(model.named_parameters())[f"base_model.model.{layout.path(2, 'up_proj')}.lora_B.default.weight"]
    target.grad[0, 0] = float("inf")
    profiler = GradientProfiler.for_lora(model, layout, ranks, LABELS)
    profiler.capture(1)
    table = profiler.table().to_pandas()
    flagged = table[table.nonfinite]
    assert list(zip(flagged.layer, flagged.module, strict=True)) == [(2, "up_proj")]
    assert math.isinf(flagged.grad_norm.iloc[0]) and len(table) == layout.num_layers * len(layout.modules)


def test_capture_happens_before_the_trainer_clips(lora_model):
    model, layout, ranks = lora_model

    class ClippingTrainer:
        def _clip_grad_norm(self, model):  # what transformers does: scale every gradient in place
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(0.01)

    class Trainer(ProfileBeforeClipping, ClippingTrainer):
        state = SimpleNamespace(global_step=4)

    expected = GradientProfiler.for_lora(model, layout, ranks, LABELS)
    expected.capture(5)
    trainer = Trainer()
    trainer.gradient_profiler = GradientProfiler.for_lora(model, layout, ranks, LABELS)
    clip_gradients(trainer, model)
    got = trainer.gradient_profiler.table().to_pandas()
    assert list(got.step.unique()) == [5]  # global_step + 1: steps count from 1
    assert got.grad_norm.tolist() == pytest.approx(expected.table().to_pandas().grad_norm.tolist())


def test_full_weight_profile_and_restore_round_trip(tiny_model_dir):
    model, _ = load_model_and_tokenizer(str(tiny_model_dir))
    layout = discover_layers(model, LoraSettings().target_modules)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    profiler = GradientProfiler.for_full_weights(model, layout, RunLabels("sft-seed0", "sft", 0))
    profiler.capture(1)
    profiler.capture(2)
    table = profiler.table()
    df = table.to_pandas()
    in_f, out_f = layout.shape(0, "q_proj")
    first = df[(df.layer == 0) & (df.module == "q_proj")]
    assert first.grad_norm.tolist() == pytest.approx([math.sqrt(in_f * out_f)] * 2) and (df["rank"] == 0).all()
    assert len(profiler.table(up_to_step=1)) == len(df) // 2
    fresh = GradientProfiler.for_full_weights(model, layout, RunLabels("sft-seed0", "sft", 0))
    fresh.restore(profiler.table(up_to_step=1))
    assert fresh.steps == [1] and fresh.table().equals(profiler.table(up_to_step=1))


def test_rank_column_is_the_rank_at_each_step_and_survives_a_resume(lora_model):
    # A strategy whose ranks change while training reports them; rows keep the rank of their own step.
    model, layout, ranks = lora_model
    profiler = GradientProfiler.for_lora(model, layout, ranks, LABELS)
    profiler.capture(1)
    profiler.set_ranks({(1, "q_proj"): 2, (1, "v_proj"): 6})
    profiler.capture(2)
    df = profiler.table().to_pandas().set_index(["step", "layer", "module"])["rank"]
    assert df[(1, 1, "q_proj")] == 8 and df[(2, 1, "q_proj")] == 2 and df[(2, 1, "v_proj")] == 6
    assert df[(2, 1, "k_proj")] == 8 and df[(2, 0, "q_proj")] == 4
    with pytest.raises(KeyError, match="not profiled"):
        profiler.set_ranks({(99, "q_proj"): 1})
    resumed = GradientProfiler.for_lora(model, layout, ranks, LABELS)
    resumed.restore(profiler.table())
    assert resumed.table().equals(profiler.table())
    resumed.capture(3)  # after a resume the latest reported ranks carry on
    later = resumed.table().to_pandas().set_index(["step", "layer", "module"])["rank"]
    assert later[(3, 1, "q_proj")] == 2


def test_a_parameter_without_gradient_is_nan_and_flagged_not_zero(lora_model):
    model, layout, ranks = lora_model
    profiler = GradientProfiler.for_lora(model, layout, ranks, LABELS)
    named = dict(model.named_parameters())
    for name in named:
        if ".layers.1.self_attn.k_proj.lora_B" in name:
            named[name].grad = None  # e.g. a step with no backward through that module
    profiler.capture(1)
    for p in model.parameters():
        p.grad = None
    profiler.capture(2)  # no backward at all: every row
    df = profiler.table().to_pandas()
    step1, step2 = df[df.step == 1], df[df.step == 2]
    flagged = step1[step1.nonfinite]
    assert list(zip(flagged.layer, flagged.module, strict=True)) == [(1, "k_proj")] and flagged.grad_norm.isna().all()
    assert step2.grad_norm.isna().all() and step2.nonfinite.all()
    assert profiler.missing_rows == 1 + len(step2)


def test_sharded_set_ups_are_refused_naming_the_setting():
    from orchestrator.core.errors import StudyError
    from workers.profiler import check_unsharded

    check_unsharded({"ACCELERATE_USE_FSDP": "false"}, SimpleNamespace(is_deepspeed_enabled=False))
    with pytest.raises(StudyError, match=r"^ACCELERATE_USE_DEEPSPEED=true turns on DeepSpeed, which shards"):
        check_unsharded({"ACCELERATE_USE_DEEPSPEED": "true"})
    with pytest.raises(StudyError, match=r"runs with FSDP \(is_fsdp_enabled\)"):
        check_unsharded({}, SimpleNamespace(is_deepspeed_enabled=False, is_fsdp_enabled=True))


def test_the_count_of_rows_without_gradient_survives_a_resume(lora_model, tmp_path):
    from types import SimpleNamespace

    from workers.tasks import get_task
    from workers.trainer import CheckpointTables, StepRecorder

    # One module without a gradient and one with a NaN gradient: both rows are NaN in the table, but only one
    # is "no gradient"; the checkpoint keeps the count the table cannot.
    model, layout, ranks = lora_model
    profiler = GradientProfiler.for_lora(model, layout, ranks, LABELS)
    named = dict(model.named_parameters())
    for name in named:
        if ".layers.0.self_attn.q_proj.lora_B" in name:
            named[name].grad = None
        if ".layers.1.self_attn.q_proj.lora_B" in name:
            named[name].grad = torch.full_like(named[name], float("nan"))
    profiler.capture(1)
    assert profiler.missing_rows == 1 and profiler.table().to_pandas().grad_norm.isna().sum() == 2
    recorder = StepRecorder(LABELS, get_task("gsm8k").rewards)
    (tmp_path / "checkpoint-1").mkdir()
    CheckpointTables(profiler, recorder).on_save(SimpleNamespace(output_dir=str(tmp_path)),
                                                 SimpleNamespace(global_step=1), None)
    resumed = GradientProfiler.for_lora(model, layout, ranks, LABELS)
    CheckpointTables(resumed, StepRecorder(LABELS, get_task("gsm8k").rewards)).restore(tmp_path / "checkpoint-1")
    assert resumed.missing_rows == 1
