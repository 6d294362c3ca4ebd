"""The transformer blocks OFA reads, and what one forward pass through them looked like.

BlockStack finds a model's blocks by structure (PEFT-wrapped models too) and each block's
preconditioning norm, whose gain is P_t = diag(γ_t); BlockCapture's hooks record every block's
input Z_t, output Z_{t+1} and call arguments during a full forward pass (a Pass), from which
block t can be re-run as u_t(Z) = f_t(Z) − Z. The choices are those of gradguide.guidance.ofa's
docstring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from gradguide.errors import GradguideError
from gradguide.methods.layernorm import norm_modules

StepFn = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass
class BlockStack:
    """The transformer blocks of a model, the module that runs them, and each block's gain."""

    parent: torch.nn.Module
    blocks: list[torch.nn.Module]
    preconditioners: list[torch.nn.Module]
    preconditioner_name: str  # its name inside block 0, e.g. "input_layernorm"

    def gain(self, t: int) -> torch.Tensor | None:
        """γ_t, the gain of block t's preconditioning norm (None: the norm has no gain)."""
        weight = getattr(self.preconditioners[t], "weight", None)
        return weight if isinstance(weight, torch.Tensor) else None


def find_blocks(model: torch.nn.Module) -> BlockStack:
    """The longest ModuleList of same-class blocks that contain normalisation layers.

    Found by structure, not by name, so PEFT-wrapped models (LoRA, prompt tuning) work too.
    """
    best: tuple[str, torch.nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1 or not all(norm_modules(m) for m in module):
            continue
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    if best is None:
        raise GradguideError(
            "OFA found no stack of transformer blocks with normalisation layers in this model"
        )
    name, blocks = best
    parent = model.get_submodule(name.rpartition(".")[0])
    chosen = [_preconditioner(b) for b in blocks]
    return BlockStack(parent, list(blocks), [m for _, m in chosen], chosen[0][0])


def _preconditioner(block: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """The first normalisation module that is a direct child of ``block`` (else the first one)."""
    direct = [(n, m) for n, m in block.named_children() if "Norm" in type(m).__name__]
    return direct[0] if direct else next(iter(norm_modules(block).items()))


@dataclasses.dataclass
class Pass:
    """One forward pass through the blocks: inputs Z_t, outputs Z_{t+1}, call arguments, mask."""

    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
    mask: torch.Tensor  # [batch, tokens] float, 1 on real tokens

    def tokens(self) -> torch.Tensor:
        """Number of non-padding tokens."""
        return self.mask.sum()

    def step_fn(self, stack: BlockStack, t: int) -> StepFn:
        """u_t(Z) = f_t(Z) − Z, block t re-run with this pass's call arguments."""
        block = stack.blocks[t]
        args, kwargs = self.calls[t]

        def step(z: torch.Tensor) -> torch.Tensor:
            out = block(z, *args[1:], **kwargs) if args else block(**kwargs, hidden_states=z)
            return _first(out) - z

        return step


def _first(output: Any) -> torch.Tensor:
    """A block's hidden-state output (some blocks return a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class BlockCapture:
    """Forward hooks recording every block's input, output and call arguments, per full pass.

    Recording happens only inside a forward pass of the blocks' parent module (e.g. LlamaModel),
    so single blocks re-run by the sharpness estimate are not recorded.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.stack = find_blocks(model)
        self.passes: list[Pass] = []
        self._current: dict[str, Any] | None = None
        parent = self.stack.parent
        self._handles = [
            parent.register_forward_pre_hook(self._begin, with_kwargs=True),
            parent.register_forward_hook(self._end),
        ]
        for t, block in enumerate(self.stack.blocks):
            self._handles.append(block.register_forward_hook(self._hook(t), with_kwargs=True))

    def _begin(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self._current = {"mask": mask, "blocks": {}}

    def _hook(self, t: int) -> Callable[..., None]:
        def hook(
            module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> None:
            if self._current is not None:
                z = args[0] if args else kwargs["hidden_states"]
                self._current["blocks"][t] = (z, _first(output), args, kwargs)

        return hook

    def _end(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        current, self._current = self._current, None
        if current is None or len(current["blocks"]) != len(self.stack.blocks):
            return
        got = [current["blocks"][t] for t in range(len(self.stack.blocks))]
        z0 = got[0][0]
        self.passes.append(
            Pass(
                inputs=[g[0] for g in got],
                outputs=[g[1] for g in got],
                calls=[(g[2], g[3]) for g in got],
                mask=_token_mask(current["mask"], z0),
            )
        )

    def take(self) -> list[Pass]:
        """The passes recorded since the last call (and forget them)."""
        passes, self.passes = self.passes, []
        return passes

    def remove(self) -> None:
        """Remove the hooks and drop whatever is recorded."""
        for h in self._handles:
            h.remove()
        self._handles, self.passes, self._current = [], [], None


def _token_mask(mask: Any, z: torch.Tensor) -> torch.Tensor:
    """[batch, tokens] float mask of real tokens (the last ``tokens`` columns of a 2-D mask)."""
    b, n = z.shape[0], z.shape[1]
    is_2d = isinstance(mask, torch.Tensor) and mask.dim() == 2
    if is_2d and mask.shape[0] == b and mask.shape[1] >= n:  # a cached prefix adds columns
        return mask[:, -n:].to(device=z.device, dtype=torch.float32)
    return torch.ones(b, n, device=z.device, dtype=torch.float32)
