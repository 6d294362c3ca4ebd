"""LoRA through PEFT (``LoraConfig`` + ``get_peft_model``): low-rank updates on chosen projections.

Targets come from ``MethodOptions.lora_targets`` (comma-separated leaf module names, or
``all-linear``). Names a model lacks are mapped to their BERT spelling when it has those instead
(``q_proj``→``query``, ``k_proj``→``key``, ``v_proj``→``value``), so the Llama-style default works
on encoders too. Saved in PEFT format (``save_pretrained``), loadable with
``PeftModel.from_pretrained(base, dir)``, plus gradguide's adapter_meta.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gradguide.config import option
from gradguide.errors import GradguideError
from gradguide.methods._peft_io import load_peft, quiet_peft, save_peft
from gradguide.methods.base import (
    Adapted,
    MethodOptions,
    adapted_from,
    read_meta,
    saved_options,
)
from gradguide.models import LoadedModel

ENCODER_NAMES = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}


def leaf_names(model: torch.nn.Module) -> set[str]:
    """Last name component of every ``nn.Linear`` in the model (what LoRA can target)."""
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def resolve_targets(model: torch.nn.Module, targets: str) -> list[str] | str:
    """The target module names for this model (encoder spellings where Llama's are absent)."""
    wanted = [t.strip() for t in targets.split(",") if t.strip()]
    if wanted == ["all-linear"]:
        return "all-linear"
    if not wanted:
        raise GradguideError(
            "lora_targets is empty; name the projections to adapt", field="lora_targets"
        )
    present = leaf_names(model)
    resolved: list[str] = []
    for target in wanted:
        name = target if target in present else ENCODER_NAMES.get(target, target)
        if name not in present:
            raise GradguideError(
                f"LoRA target {target!r} is not a linear layer of this model; it has: "
                + ", ".join(sorted(present)),
                field="lora_targets",
            )
        if name not in resolved:
            resolved.append(name)
    return resolved


@dataclass
class LoRAOptions:
    """LoRA's settings (``method_options.lora_*``)."""

    lora_r: int = option(8, "LoRA rank")
    lora_alpha: int = option(16, "LoRA alpha")
    lora_dropout: float = 0.0
    lora_targets: str = option("q_proj,v_proj", "LoRA target modules, comma-separated")


class LoRA:
    """PEFT LoRA on the attention projections (query and value by default)."""

    name = "lora"
    trains = True
    # Only r x (in + out) values per matrix, B starting at zero: the usual 1e-4..1e-3 range.
    default_lr = 5e-4
    default_guidance = ""
    role = "baseline"
    report_rank = 50
    step_factor = 1.0  # the unit of the step costs
    eval_factor = 1.0
    description = "LoRA (PEFT): low-rank updates of the attention projections"
    options = LoRAOptions
    #: its options are hashed into every run's key (as before options were scoped: stored
    #: runs keep their keys), not only its own runs' (methods/base.py options_scoped_out)
    options_scoped = False

    def apply(self, lm: LoadedModel, options: MethodOptions) -> Adapted:
        """Wrap ``lm.model`` with PEFT LoRA; only the LoRA matrices are trainable."""
        from peft import LoraConfig, TaskType, get_peft_model

        targets = resolve_targets(lm.model, options.lora_targets)
        task = TaskType.CAUSAL_LM if lm.kind == "causal" else TaskType.FEATURE_EXTRACTION
        config = LoraConfig(
            task_type=task,
            r=options.lora_r,
            lora_alpha=options.lora_alpha,
            lora_dropout=options.lora_dropout,
            target_modules=targets,
            bias="none",
        )
        was_training = lm.model.training
        with quiet_peft():
            peft_model = get_peft_model(lm.model, config)
        peft_model.train(was_training)
        return adapted_from(peft_model, self.name, options, info={"lora_targets": targets})

    def save(self, adapted: Adapted, out_dir: Path, base_model: str) -> None:
        """Save in PEFT format (``save_pretrained``) plus adapter_meta.json."""
        save_peft(adapted.model, adapted, out_dir, base_model)

    def load(self, lm: LoadedModel, out_dir: Path, options: MethodOptions) -> Adapted:
        """``PeftModel.from_pretrained`` on a fresh ``lm``, with the LoRA matrices trainable."""
        meta = read_meta(out_dir, self.name, lm)
        was_training = lm.model.training
        peft_model = load_peft(lm.model, out_dir, trainable=True)
        peft_model.train(was_training)
        targets = peft_model.peft_config["default"].target_modules
        info = {"lora_targets": sorted(targets) if isinstance(targets, set) else targets}
        return adapted_from(peft_model, self.name, saved_options(meta, options), info=info)
