"""Where a run computes and in what precision: the device and weight-dtype settings, and the few
device-specific choices (autocast type, attention kernel for double backward, memory records).

``device``: ``auto`` (the first CUDA GPU when one is visible, else the CPU), ``cpu``, ``cuda`` or
``cuda:N``. ``dtype``: the weights' precision, ``fp32`` (default) or ``bf16``; the separate
``bf16`` setting of a run is autocast (fp32 weights, bf16 matmuls).

Exact Hessian-vector products differentiate the backward pass of attention. PyTorch's fused
scaled-dot-product kernels (flash and memory-efficient on CUDA, the CPU flash kernel) have no
double backward; :func:`double_backward_attention` runs SDPA on its math backend for the steps
that take one, so the rest of a run keeps the fast kernels.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch

from gradguide.errors import GradguideError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(spec: str, field: str = "device") -> None:
    """Refuse a device setting that is not auto, cpu, cuda or cuda:N (before anything loads)."""
    if not _SPEC.match(spec):
        raise GradguideError(f"must be auto, cpu, cuda or cuda:N, got {spec!r}", field=field)


def parse_dtype(name: str, field: str = "dtype") -> torch.dtype:
    """The torch dtype of a weight-dtype setting (fp32 or bf16)."""
    if name not in DTYPES:
        raise GradguideError(f"must be one of {', '.join(DTYPES)}, got {name!r}", field=field)
    return DTYPES[name]


def resolve_device(spec: str, field: str = "device") -> torch.device:
    """The torch device of a setting; CUDA that is asked for but absent is a clear error."""
    check_device(spec, field)
    if spec == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise GradguideError(
            f"{spec} was asked for, but this PyTorch sees no CUDA GPU (a CPU build, or no "
            "driver); use device auto or cpu",
            field=field,
        )
    index = int(spec.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise GradguideError(
            f"{spec} does not exist: {count} CUDA device(s) visible (cuda:0-{count - 1})",
            field=field,
        )
    return torch.device("cuda", index)


def check_device_settings(config: Any) -> None:
    """Refuse device settings of a TrainConfig that cannot be right (field named).

    Availability is not checked here (a grid is checked on one machine and may run on another):
    :func:`resolve_device` does that when the run starts.
    """
    from gradguide.guidance import expand_terms, needs_penalty_engine, parse_guidance
    from gradguide.methods import get_method

    check_device(config.device)
    parse_dtype(config.dtype)
    g = config.guidance
    names = parse_guidance(g.use or get_method(config.method).default_guidance)
    if config.dtype == "bf16" and g.hvp == "fd" and needs_penalty_engine(names):
        raise GradguideError(
            "bf16 weights with a finite-difference HVP are refused: its step is below bf16's "
            "resolution, so the difference measures rounding; use guidance.hvp=exact or fp32",
            field="dtype",
        )
    sharp = "ofa-sharp" in expand_terms(names)
    if sharp and g.ofa.jvp == "fd" and config.dtype == "bf16":
        raise GradguideError(
            "the OFA sharpness' finite-difference JVP on bf16 weights measures rounding: its step "
            "(1e-3 of the hidden states) is below bf16's resolution (measured on tiny-llama: 4.7x "
            "off the exact value; the exact JVP: 0.7%); use guidance.ofa.jvp=exact or fp32 "
            "weights (bf16 autocast is fine: the fd re-runs are in fp32)",
            field="guidance.ofa.jvp",
        )
    if config.gradient_checkpointing and sharp and g.ofa.jvp == "exact":
        raise GradguideError(
            "gradient checkpointing cannot recompute a block under the exact OFA sharpness JVP "
            "(forward-mode AD saves other tensors than the plain forward: torch's CheckpointError);"
            " use guidance.ofa.jvp=fd or turn gradient_checkpointing off",
            field="gradient_checkpointing",
        )


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (the CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on ``device``'s type (a CPU autocast does nothing for CUDA tensors)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@contextlib.contextmanager
def double_backward_attention(enabled: bool = True) -> Iterator[None]:
    """Scaled-dot-product attention on its math backend, which has a double backward.

    Wrap the forward *and* the first backward of a step that takes an exact HVP: with gradient
    checkpointing the first backward recomputes the forward, which must pick the same kernel.
    """
    if not enabled:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


def enable_checkpointing(model: torch.nn.Module, name: str) -> None:
    """Non-reentrant gradient checkpointing of a transformers model's blocks (clear error else).

    Non-reentrant: it supports ``torch.autograd.grad`` and double backward (exact HVPs), and
    needs no input that requires grad (frozen embeddings under LoRA).
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise GradguideError(
            f"{name} does not support gradient checkpointing (a transformers model whose blocks "
            "can be checkpointed)",
            field="gradient_checkpointing",
        )
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)  # type: ignore[operator]


def reset_peak_memory(device: torch.device) -> None:
    """Start a new high-water mark of allocated device memory (nothing to do on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak device memory allocated by tensors since the last reset, in MiB (None on the CPU,
    whose peak is the process's resident memory)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def describe(device: torch.device, dtype: str, autocast_bf16: bool) -> dict[str, Any]:
    """The device facts of a run record: type, index, name, memory, precision (``dtype``: the
    weights', as the model record names it)."""
    out: dict[str, Any] = {
        "type": device.type,
        "index": device.index,
        "name": "cpu",
        "dtype": dtype,
        "autocast": "bf16" if autocast_bf16 else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out["name"] = props.name
        out["memory_mb"] = round(props.total_memory / 2**20)
        out["capability"] = f"{props.major}.{props.minor}"
        out["cuda"] = torch.version.cuda
    return out
