"""The frozen base stays frozen: merged weights for vLLM computed out of place, and a digest that proves it.

TRL 1.16's colocated weight sync (``VLLMGeneration._iter_named_params``) merges the adapter into the base
weights in place, pushes them, and unmerges: in bf16 ``(W + D) - D != W``, so every optimizer step moves the
"frozen" base a little. Measured with peft 0.21.2 on a bf16 1536x1536 q_proj whose LoRA-B moves a small step
before each cycle (as training moves it): after 100 cycles the base had drifted by 0.38x the Frobenius norm
of the LoRA update itself, after 1,000 by 0.76x, with 33% of its elements changed (the paper's setup: bf16,
colocate, 1,000 steps). ``make bench``'s ``drift`` benchmark measures it on real GRPO steps.

:func:`merged_weights` instead yields, under the names vLLM expects, every base weight as it is and every
LoRA-targeted weight as ``W + scale * B A`` computed into a new tensor in the base dtype (PEFT's
``get_delta_weight``), so nothing writes to the base. The worker pushes these on GPU and CPU alike
(:mod:`workers.generation`). :func:`frozen_digest` is the sha256 of every frozen parameter, which run.json
records before training and after evaluation (``frozen_base``); a run where they differ fails.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from peft.tuners.lora import LoraLayer

# What PEFT and wrappers add to parameter names, removed to get the checkpoint names vLLM loads (as TRL does).
_NAME_PREFIX = "base_model.model."
_NAME_PARTS = (".base_layer", "_checkpoint_wrapped_module.", "modules_to_save.default.")


def vllm_name(name: str) -> str:
    """The checkpoint name of a PEFT model's parameter.

    >>> vllm_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight")
    'model.layers.0.self_attn.q_proj.weight'
    """
    name = name.removeprefix(_NAME_PREFIX)
    for part in _NAME_PARTS:
        name = name.replace(part, "")
    return name


def merged_weights(peft_model: torch.nn.Module, adapter: str = "default") -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, weight) of the adapted model, the adapter merged out of place; the model is untouched.

    Weights that are not LoRA-targeted are yielded as they are (views: nothing modifies them); adapter
    parameters and PEFT's copies of modules_to_save originals are skipped.
    """
    lora_layers = {name: module for name, module in peft_model.named_modules() if isinstance(module, LoraLayer)}
    for name, param in peft_model.named_parameters():
        if ".lora_" in name or "original_module" in name:
            continue
        owner = lora_layers.get(name.removesuffix(".base_layer.weight")) if name.endswith(".base_layer.weight") \
            else None
        with torch.no_grad():
            if owner is not None and adapter in owner.lora_A and not getattr(owner, "merged", False):
                tensor = param.detach() + owner.get_delta_weight(adapter).to(param.dtype)  # a new tensor
            else:
                tensor = param.detach()
        yield vllm_name(name), tensor


def frozen_digest(model: torch.nn.Module) -> str:
    """sha256 over the names and bytes of every parameter that does not train, in name order."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if param.requires_grad:
            continue
        data = param.detach().to("cpu").contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}:".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
