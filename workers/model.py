"""Load a causal LM and its tokenizer, and find its decoder layers and projection modules.

``load_model_and_tokenizer(name_or_path)`` takes a hub id (``Qwen/Qwen2.5-1.5B-Instruct``) or a local
directory (e.g. one written by :mod:`workers.local_model`). ``discover_layers(model, target_modules)`` reads
the layer structure from the model itself instead of assuming ``model.layers``: the decoder stack is the
largest ``nn.ModuleList`` of identical blocks that hold the target ``nn.Linear`` projections (Qwen2,
Llama/SmolLM and Mistral all have it at ``model.layers``; wrapped or multimodal models have it elsewhere).

The resulting :class:`LayerLayout` names every (layer, module) by its full module path and shape; LoRA
configs (:mod:`workers.adapters.lora`) and the gradient profiler use it so that a layer index always means the same
module. Simplified: one decoder stack per model (no encoder-decoder), dense projections (no MoE experts).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from orchestrator.core.errors import StudyError
from orchestrator.core.sources import is_local_path
from orchestrator.core.storage import fetch, is_uri

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model_and_tokenizer(name_or_path: str, dtype: str = "float32", revision: str | None = None):
    """Return ``(model, tokenizer)`` for a hub id or a local model directory.

    A tokenizer without a pad token gets pad = eos (TRL pads prompts and completions). Problems the user can
    fix (missing directory, model not cached while offline, unknown dtype) raise :class:`StudyError`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # slow import; keep it off module import

    if dtype not in DTYPES:
        raise StudyError(f"model.dtype: must be one of {sorted(DTYPES)}, got {dtype!r}")
    if is_uri(name_or_path):  # a prepared model in an object-storage cache_dir: this node's copy of it
        name_or_path = str(fetch(name_or_path))
    if is_local_path(name_or_path):
        source = Path(name_or_path).expanduser()
        if not source.is_dir():
            raise StudyError(f"model.name_or_path: local model directory {name_or_path} does not exist")
        name_or_path = str(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, revision=revision, dtype=DTYPES[dtype])
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = " (HF_HUB_OFFLINE is set: use a local directory or a model already in the HF cache)" if offline else ""
        raise StudyError(f"model.name_or_path: cannot load {name_or_path!r}{hint}: {err}".replace("\n", " ")) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


@dataclass(frozen=True)
class LayerLayout:
    """Where each (layer, projection module) of the decoder stack lives, and its Linear shape.

    ``paths[l][i]`` is the full module path of ``modules[i]`` in layer ``l`` (as ``model.named_modules()``
    names it), ``shapes[l][i]`` its ``(in_features, out_features)``.

    >>> layout = LayerLayout("model.layers", ("q_proj",), (("self_attn.q_proj",),), (((8, 4),),))
    >>> layout.num_layers, layout.path(0, "q_proj"), layout.shape(0, "q_proj")
    (1, 'model.layers.0.self_attn.q_proj', (8, 4))
    """

    layers_path: str
    modules: tuple[str, ...]
    relative_paths: tuple[tuple[str, ...], ...]
    shapes: tuple[tuple[tuple[int, int], ...], ...]

    @property
    def num_layers(self) -> int:
        return len(self.relative_paths)

    def path(self, layer: int, module: str) -> str:
        """Full module path, e.g. ``model.layers.3.self_attn.q_proj``."""
        return f"{self.layers_path}.{layer}.{self.relative_paths[layer][self._index(module)]}"

    def shape(self, layer: int, module: str) -> tuple[int, int]:
        """``(in_features, out_features)`` of that module's Linear."""
        return self.shapes[layer][self._index(module)]

    def entries(self) -> list[tuple[int, str]]:
        """Every (layer, module), layer-major in target order."""
        return [(layer, module) for layer in range(self.num_layers) for module in self.modules]

    def _index(self, module: str) -> int:
        try:
            return self.modules.index(module)
        except ValueError:
            raise KeyError(f"{module!r} is not one of the layout's modules {self.modules}") from None


def _find_projection(layer: nn.Module, module: str) -> tuple[str, nn.Linear] | None:
    """The one ``nn.Linear`` in ``layer`` whose attribute name is ``module`` (e.g. ``self_attn.q_proj``)."""
    found = [
        (name, sub) for name, sub in layer.named_modules()
        if name.rsplit(".", 1)[-1] == module and isinstance(sub, nn.Linear)
    ]
    if len(found) > 1:
        raise StudyError(
            f"lora.target_modules: {module!r} names {len(found)} Linear modules in one decoder layer "
            f"({', '.join(name for name, _ in found)}); name projections that are unique per layer"
        )
    return found[0] if found else None


def _find_layer_stack(model: nn.Module, target_modules: Sequence[str]) -> tuple[str, nn.ModuleList]:
    """The largest ModuleList of same-class blocks where some block holds one of the target projections."""
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        if any(_find_projection(block, target) for block in module for target in target_modules):
            candidates.append((len(module), name, module))
    if not candidates:
        raise StudyError(
            f"lora.target_modules: no decoder layer stack of {type(model).__name__} holds any of "
            f"{list(target_modules)}; name the model's projection Linear modules"
        )
    # max() keeps the first of equal sizes, i.e. the outermost in named_modules order.
    _, name, stack = max(candidates, key=lambda item: item[0])
    return name, stack


def discover_layers(model: nn.Module, target_modules: Sequence[str]) -> LayerLayout:
    """Find the decoder layers and, for every layer, the path and shape of each target projection.

    Pass the plain transformers model (not a PEFT wrapper, whose Linears are LoRA layers). Every layer must
    hold every target module as an ``nn.Linear``; otherwise this raises :class:`StudyError` naming it.
    """
    target_modules = tuple(target_modules)
    layers_path, stack = _find_layer_stack(model, target_modules)
    relative_paths, shapes = [], []
    for index, block in enumerate(stack):
        layer_paths, layer_shapes = [], []
        for module in target_modules:
            found = _find_projection(block, module)
            if found is None:
                raise StudyError(
                    f"lora.target_modules: {module!r} is not an nn.Linear in decoder layer {index} "
                    f"({layers_path}.{index}) of {type(model).__name__}; remove it from lora.target_modules"
                )
            name, linear = found
            layer_paths.append(name)
            layer_shapes.append((linear.in_features, linear.out_features))
        relative_paths.append(tuple(layer_paths))
        shapes.append(tuple(layer_shapes))
    return LayerLayout(layers_path, target_modules, tuple(relative_paths), tuple(shapes))
