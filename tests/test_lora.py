"""Per-layer LoRA ranks: layer discovery, anchored rank_pattern keys, and the audit that catches wrong ranks."""

import math
import re

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.utils.other import get_pattern_key
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from orchestrator.core.config import LoraSettings
from orchestrator.core.errors import StudyError
from orchestrator.core.projections import PROJECTION_MODULES
from tests.fixtures.tiny import apply_lora
from workers.adapters.lora import anchored_key, audit_lora, build_lora_config
from workers.model import discover_layers, load_model_and_tokenizer

# A non-uniform allocation over 12 layers, every rank distinct, so any cross-layer leak changes a rank.
RANKS = (4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48)
SETTINGS = LoraSettings(rank=32, alpha=64.0, dropout=0.0)


@pytest.fixture
def deep_model(deep_model_dir):
    model, _ = load_model_and_tokenizer(str(deep_model_dir))
    return model


def lora_weights(peft_model):
    return {name: p.detach().clone() for name, p in peft_model.named_parameters() if "lora_" in name}


def test_discovery_finds_every_layer_and_projection_with_shapes(deep_model):
    layout = discover_layers(deep_model, PROJECTION_MODULES)
    assert layout.num_layers == 12 and layout.modules == PROJECTION_MODULES
    for layer in range(12):
        for module in PROJECTION_MODULES:
            linear = deep_model.get_submodule(layout.path(layer, module))
            assert isinstance(linear, nn.Linear)
            assert layout.path(layer, module).startswith(f"model.layers.{layer}.")
            assert layout.shape(layer, module) == (linear.weight.shape[1], linear.weight.shape[0])
    assert layout.path(3, "q_proj") == "model.layers.3.self_attn.q_proj"
    assert layout.path(11, "down_proj") == "model.layers.11.mlp.down_proj"


def test_anchored_keys_match_exactly_their_module_under_peft_matching(deep_model):
    layout = discover_layers(deep_model, PROJECTION_MODULES)
    config = build_lora_config(layout, RANKS, SETTINGS)
    keys = list(config.rank_pattern)
    assert keys[0] == r"^model\.layers\.0\.self_attn\.q_proj$"
    names = [name for name, _ in deep_model.named_modules() if name]
    for name in names + [f"base_model.model.{name}" for name in names]:
        matching = [key for key in keys if re.match(rf"(.*\.)?({key})$", name)]  # peft 0.21.2 get_pattern_key
        expected = [anchored_key(name)] if anchored_key(name) in config.rank_pattern else []
        assert matching == expected, name
        assert get_pattern_key(keys, name) == (expected[0] if expected else name)
    assert config.rank_pattern[anchored_key("model.layers.10.self_attn.q_proj")] == 44
    assert config.alpha_pattern[anchored_key("model.layers.10.self_attn.q_proj")] == 88.0


def test_wildcard_rank_pattern_leaks_layer_1_rank_into_layers_10_11_and_the_audit_catches_it(deep_model):
    layout = discover_layers(deep_model, ("q_proj",))
    naive = LoraConfig(r=2, target_modules=["q_proj"], rank_pattern={rf"layers\.{layer}.*q_proj": r for layer, r in enumerate(RANKS)})
    peft_model = get_peft_model(deep_model, naive)
    base = peft_model.get_base_model()
    got = [base.get_submodule(layout.path(layer, "q_proj")).lora_A["default"].weight.shape[0] for layer in range(12)]
    assert got[:10] == list(RANKS[:10])
    assert got[10] == got[11] == RANKS[1]  # `layers\.1.*q_proj` comes first in dict order and matches 10, 11
    with pytest.raises(StudyError) as caught:
        audit_lora(peft_model, layout, RANKS, LoraSettings(rank=2, alpha=8.0, scaling="fixed_alpha",
                                                           target_modules=("q_proj",)))
    message = str(caught.value)
    assert f"model.layers.10.self_attn.q_proj: rank {RANKS[1]}, expected {RANKS[10]}" in message
    assert f"model.layers.11.self_attn.q_proj: rank {RANKS[1]}, expected {RANKS[11]}" in message
    assert "\n" not in message


def test_apply_lora_gives_exact_nonuniform_ranks_params_and_constant_scaling(deep_model):
    layout = discover_layers(deep_model, PROJECTION_MODULES)
    shapes = {name: tuple(m.weight.shape) for name, m in deep_model.named_modules() if isinstance(m, nn.Linear)}
    peft_model, audit = apply_lora(deep_model, layout, RANKS, SETTINGS, seed=0)
    base = peft_model.get_base_model()
    predicted = 0
    for layer, rank in enumerate(RANKS):
        for module in PROJECTION_MODULES:
            lora_layer = base.get_submodule(layout.path(layer, module))
            out_features, in_features = shapes[layout.path(layer, module)]
            assert lora_layer.lora_A["default"].weight.shape == (rank, in_features)
            assert lora_layer.lora_B["default"].weight.shape == (out_features, rank)
            assert lora_layer.scaling["default"] == pytest.approx(SETTINGS.alpha / SETTINGS.rank)
            assert audit.module_params[(layer, module)] == rank * (in_features + out_features)
            predicted += rank * (in_features + out_features)
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert len(trainable) == 2 * 12 * len(PROJECTION_MODULES)
    assert audit.trainable_params == predicted == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert audit.layer_ranks == RANKS
    assert audit.to_dict()["layer_params"] == [
        rank * sum(sum(layout.shape(0, m)) for m in PROJECTION_MODULES) for rank in RANKS
    ]


def test_lora_init_follows_the_seed(deep_model_dir):
    def init(seed):
        model, _ = load_model_and_tokenizer(str(deep_model_dir))
        layout = discover_layers(model, PROJECTION_MODULES)
        return lora_weights(apply_lora(model, layout, RANKS, SETTINGS, seed=seed)[0])

    first, again, other = init(0), init(0), init(1)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    lora_a = [name for name in first if ".lora_A." in name]
    assert all(not torch.equal(first[name], other[name]) for name in lora_a)


def test_llama_layout_and_a_wrapped_model_are_discovered():
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(config)
    layout = discover_layers(llama, PROJECTION_MODULES)
    assert layout.num_layers == 3
    assert layout.path(2, "gate_proj") == "model.layers.2.mlp.gate_proj"
    assert layout.shape(0, "k_proj") == (32, 16) and layout.shape(1, "down_proj") == (48, 32)

    class Wrapper(nn.Module):  # e.g. a language model nested in a multimodal model
        def __init__(self, inner):
            super().__init__()
            self.language_model = inner

        def forward(self, **kwargs):
            return self.language_model(**kwargs)

    wrapped = discover_layers(Wrapper(llama), ("q_proj", "down_proj"))
    assert wrapped.path(1, "q_proj") == "language_model.model.layers.1.self_attn.q_proj"
    peft_model, audit = apply_lora(llama, layout, (4, 8, 12), SETTINGS, seed=0)
    assert audit.layer_ranks == (4, 8, 12)


def test_missing_or_broken_target_modules_are_named(deep_model):
    with pytest.raises(StudyError, match="qkv_proj"):
        discover_layers(deep_model, ("q_proj", "qkv_proj"))
    with pytest.raises(StudyError, match="no decoder layer stack"):
        discover_layers(deep_model, ("c_attn",))
    deep_model.model.layers[2].self_attn.k_proj = nn.Identity()
    with pytest.raises(StudyError, match=r"'k_proj' is not an nn.Linear in decoder layer 2 \(model.layers.2\)"):
        discover_layers(deep_model, PROJECTION_MODULES)


def test_rank_count_and_values_are_checked(deep_model):
    layout = discover_layers(deep_model, PROJECTION_MODULES)
    with pytest.raises(StudyError, match="11 ranks but the model has 12"):
        build_lora_config(layout, RANKS[:-1], SETTINGS)
    with pytest.raises(StudyError, match="layer 3 rank 0"):
        build_lora_config(layout, (4, 4, 4, 0) + (4,) * 8, SETTINGS)


def test_saved_adapter_reloads_with_the_same_ranks(deep_model_dir, tmp_path):
    # Checkpoint resume reloads the adapter from adapter_config.json: the anchored keys must survive it.
    from peft import PeftModel

    model, _ = load_model_and_tokenizer(str(deep_model_dir))
    layout = discover_layers(model, PROJECTION_MODULES)
    peft_model, _ = apply_lora(model, layout, RANKS, SETTINGS, seed=5)
    peft_model.save_pretrained(tmp_path / "adapter")
    fresh, _ = load_model_and_tokenizer(str(deep_model_dir))
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter", is_trainable=True)
    audit = audit_lora(reloaded, layout, RANKS, SETTINGS)
    assert audit.layer_ranks == RANKS
    saved, loaded = lora_weights(peft_model), lora_weights(reloaded)
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)


class Stack(nn.Module):
    """Decoder-like layers with one 256 x 256 q_proj each, so every layer's LoRA sees the same input."""

    def __init__(self, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict({"q_proj": nn.Linear(256, 256, bias=False)}) for _ in range(layers))

    def forward(self, x, g):
        return sum((block["q_proj"](x) * g).sum() for block in self.layers)


@pytest.mark.parametrize(("scaling", "scale_of"), [
    ("constant", lambda r: 64 / 32), ("fixed_alpha", lambda r: 64 / r), ("rslora", lambda r: 64 / math.sqrt(r))])
def test_each_scaling_convention_is_built_audited_and_sets_the_rank_gradient_law(scaling, scale_of):
    # At initialisation (B = 0) the LoRA-B gradient is scale * g (A x)^T, and |A x| grows like sqrt(r): so its norm
    # grows like sqrt(r) under `constant`, falls like 1/sqrt(r) under `fixed_alpha`, stays flat under `rslora`.
    from peft import get_peft_model

    ranks = (8, 16, 32, 64)
    torch.manual_seed(0)
    model = Stack(len(ranks))
    layout = discover_layers(model, ("q_proj",))
    settings = LoraSettings(rank=32, alpha=64.0, dropout=0.0, scaling=scaling, target_modules=("q_proj",))
    config = build_lora_config(layout, ranks, settings)
    config.task_type = None  # a plain module, not a causal LM
    peft_model = get_peft_model(model, config)
    audit = audit_lora(peft_model, layout, ranks, settings)
    assert audit.layer_scales == pytest.approx([scale_of(r) for r in ranks]) and audit.to_dict()["scaling"] == scaling
    x, g = torch.randn(64, 256), torch.randn(64, 256)
    peft_model(x, g).backward()
    norms = [peft_model.get_base_model().layers[i]["q_proj"].lora_B["default"].weight.grad.norm().item()
             for i in range(len(ranks))]
    expected = [scale_of(r) * math.sqrt(r) for r in ranks]
    assert [n / norms[0] for n in norms] == pytest.approx([e / expected[0] for e in expected], rel=0.15)
    # The audit holds each module to its own convention: another convention's model fails it.
    other = "fixed_alpha" if scaling != "fixed_alpha" else "constant"
    with pytest.raises(StudyError, match=rf"scale .*expected .*\({other}\)"):
        audit_lora(peft_model, layout, ranks, LoraSettings(rank=32, alpha=64.0, scaling=other,
                                                           target_modules=("q_proj",)))
