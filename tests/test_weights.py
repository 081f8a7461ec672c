"""The frozen base stays frozen (issue 11): merged weights for vLLM are computed out of place, and the digest
that run.json records sees any change to the base."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from orchestrator.core.config import LoraSettings
from orchestrator.core.projections import PROJECTION_MODULES
from workers.adapters.lora import build_lora_config
from workers.model import discover_layers, load_model_and_tokenizer
from workers.weights import frozen_digest, merged_weights, vllm_name


@pytest.fixture
def bf16_lora_model(tiny_model_dir):
    model, _ = load_model_and_tokenizer(str(tiny_model_dir), dtype="bfloat16")
    layout = discover_layers(model, PROJECTION_MODULES)
    settings = LoraSettings(rank=8, alpha=16.0, dropout=0.0)
    torch.manual_seed(0)
    return get_peft_model(model, build_lora_config(layout, [8] * layout.num_layers, settings)), layout


def move_lora_b(model, generator, size=1e-3):
    """A small step of every LoRA-B, as an optimizer step makes one."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(size * torch.randn(param.shape, generator=generator, dtype=param.dtype))


def test_many_out_of_place_syncs_leave_a_bf16_base_bitwise_unchanged_where_in_place_drifts(bf16_lora_model):
    model, layout = bf16_lora_model
    before = frozen_digest(model)
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        move_lora_b(model, generator)
        for _name, _tensor in merged_weights(model):
            pass
    assert frozen_digest(model) == before
    # What TRL's sync does (merge in place, read, unmerge), on the same model: the digest sees the drift.
    for _ in range(5):
        move_lora_b(model, generator)
        model.merge_adapter()
        model.unmerge_adapter()
    assert frozen_digest(model) != before


def test_merged_weights_are_the_base_plus_the_scaled_update_under_checkpoint_names(bf16_lora_model):
    model, layout = bf16_lora_model
    move_lora_b(model, torch.Generator().manual_seed(2), size=0.1)
    weights = dict(merged_weights(model))
    assert not any("lora_" in name or "base_layer" in name for name in weights)
    path = layout.path(1, "q_proj")
    module = model.get_base_model().get_submodule(path)
    expected = module.base_layer.weight + (module.lora_B["default"].weight.float() @
                                           module.lora_A["default"].weight.float() * module.scaling["default"]
                                           ).to(torch.bfloat16)
    assert weights[f"{path}.weight"].dtype == torch.bfloat16 and torch.equal(weights[f"{path}.weight"], expected)
    assert not torch.equal(weights[f"{path}.weight"], module.base_layer.weight)  # the update is in it
    norm_name = next(n for n in weights if n.endswith("input_layernorm.weight"))
    assert weights[norm_name].data_ptr() == dict(model.named_parameters())[
        "base_model.model." + norm_name].data_ptr()  # untouched weights are passed as they are
    assert vllm_name("base_model.model.lm_head.modules_to_save.default.weight") == "lm_head.weight"
