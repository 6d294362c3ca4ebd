"""Houlsby-style bottleneck adapters (Houlsby et al., 2019), written here in a few lines.

No maintained library fits: the ``adapters`` package (1.3.0) requires ``transformers~=4.57.6`` and
would downgrade transformers 5, and PEFT has no bottleneck adapter. So each layer gets two
:class:`Bottleneck` modules, ``h + up(act(down(h)))`` with ``up`` zero-initialised (the adapted
model starts exactly equal to the base model) and ``down`` drawn from N(0, adapter_init_scale²)
(Houlsby et al.: near-identity init, std 1e-2). They sit where the paper puts them, on the
sublayer output *before* the residual add:

- Llama-style decoder layers (``self_attn`` and ``mlp`` children): on the attention output
  (first element of its tuple) and on the MLP output; the layer adds the residual afterwards.
- BERT-style encoder layers (``attention.output.dense`` and ``output.dense``): on the projection
  output, before dropout, the residual add and LayerNorm inside ``BertSelfOutput``/``BertOutput``.

Each adapter is registered as a child named ``adapter`` of the module it follows and applied by a
forward hook, so every base parameter keeps its name (guidance terms and saved files refer to
base weights by name) and only ``….adapter.down/up.*`` tensors are new.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from gradguide.config import option
from gradguide.errors import GradguideError
from gradguide.methods.base import (
    Adapted,
    MethodOptions,
    SavedAsTensors,
    adapted_from,
    freeze_all,
    model_dtype_device,
)
from gradguide.models import LoadedModel

ADAPTER_ATTR = "adapter"


class Bottleneck(torch.nn.Module):
    """``h + up(silu(down(h)))``: a residual bottleneck that starts as the identity."""

    def __init__(
        self,
        dim: int,
        size: int,
        init_scale: float,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.down = torch.nn.Linear(dim, size, dtype=dtype, device=device)
        self.up = torch.nn.Linear(size, dim, dtype=dtype, device=device)
        self.act = torch.nn.SiLU()
        with torch.no_grad():
            torch.nn.init.normal_(self.down.weight, std=init_scale)
            torch.nn.init.zeros_(self.down.bias)
            torch.nn.init.zeros_(self.up.weight)
            torch.nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Add the bottleneck's output to ``hidden``."""
        return hidden + self.up(self.act(self.down(hidden)))


def _apply_adapter(module: torch.nn.Module, args: Any, output: Any) -> Any:
    """Forward hook: run the module's ``adapter`` child on its output (first element of a tuple)."""
    adapter = getattr(module, ADAPTER_ATTR)
    if isinstance(output, tuple):
        return (adapter(output[0]), *output[1:])
    return adapter(output)


def adapter_sites(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The sublayers whose outputs get an adapter, by name (two per transformer layer)."""
    sites: dict[str, torch.nn.Module] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        attn, mlp = getattr(module, "self_attn", None), getattr(module, "mlp", None)
        if isinstance(attn, torch.nn.Module) and isinstance(mlp, torch.nn.Module):
            sites[prefix + "self_attn"] = attn
            sites[prefix + "mlp"] = mlp
            continue
        attention, output = getattr(module, "attention", None), getattr(module, "output", None)
        attn_dense = getattr(getattr(attention, "output", None), "dense", None)
        out_dense = getattr(output, "dense", None)
        if isinstance(attn_dense, torch.nn.Linear) and isinstance(out_dense, torch.nn.Linear):
            sites[prefix + "attention.output.dense"] = attn_dense
            sites[prefix + "output.dense"] = out_dense
    return sites


def _hidden_size(model: torch.nn.Module) -> int:
    """The model's hidden size (what every adapter maps back to)."""
    size = getattr(getattr(model, "config", None), "hidden_size", None)
    if not isinstance(size, int):
        raise GradguideError("adapter: the model's config has no hidden_size")
    return size


def insert_adapters(model: torch.nn.Module, options: MethodOptions) -> int:
    """Attach a zero-initialised bottleneck after every attention and MLP block; return count."""
    if options.adapter_size < 1:
        raise GradguideError("adapter_size must be at least 1", field="adapter_size")
    if not math.isfinite(options.adapter_init_scale) or options.adapter_init_scale < 0:
        raise GradguideError(
            "adapter_init_scale must be a finite number >= 0", field="adapter_init_scale"
        )
    sites = adapter_sites(model)
    if not sites:
        raise GradguideError(
            "adapter: found no transformer layers (supported: Llama-style self_attn/mlp, "
            "BERT-style attention.output.dense/output.dense)"
        )
    if any(hasattr(m, ADAPTER_ATTR) for m in sites.values()):
        raise GradguideError("adapter: this model already has adapters; load a fresh base model")
    dim = _hidden_size(model)
    dtype, device = model_dtype_device(model)
    for module in sites.values():
        bottleneck = Bottleneck(
            dim, options.adapter_size, options.adapter_init_scale, dtype, device
        )
        bottleneck.train(module.training)
        module.add_module(ADAPTER_ATTR, bottleneck)
        module.register_forward_hook(_apply_adapter)
    return len(sites)


@dataclass
class AdapterOptions:
    """The bottleneck adapters' settings (``method_options.adapter_*``)."""

    adapter_size: int = option(16, "bottleneck adapter width")
    adapter_init_scale: float = 1e-2


class BottleneckAdapters(SavedAsTensors):
    """Two bottleneck adapters per layer; only the adapters are trained."""

    name = "adapter"
    trains = True
    # New, zero-started modules with few parameters: Houlsby et al. searched 1e-4..1e-3.
    default_lr = 1e-3
    default_guidance = ""
    role = "baseline"
    report_rank = 40
    step_factor = 1.0
    eval_factor = 1.0
    description = "bottleneck adapters (Houlsby) after each attention and MLP block"
    options = AdapterOptions
    #: its options are hashed into every run's key (as before options were scoped: stored
    #: runs keep their keys), not only its own runs' (methods/base.py options_scoped_out)
    options_scoped = False

    def apply(self, lm: LoadedModel, options: MethodOptions) -> Adapted:
        """Insert adapters into ``lm.model`` (in place) and freeze every base weight."""
        freeze_all(lm.model)
        count = insert_adapters(lm.model, options)
        return adapted_from(lm.model, self.name, options, info={"adapters": count})
