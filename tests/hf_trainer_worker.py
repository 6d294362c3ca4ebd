"""GuidedTrainer on tiny-llama + LoRA with SGG's magnitude penalty, shared by tests/test_hf.py.

As a script (one process, or one of ``torchrun --nproc_per_node N``): trains 3 steps on the
first 8 demo examples, ``8 // N`` per process, and writes ``OUT/rank<r>.safetensors`` (the
trainable parameters) and ``OUT/rank<r>.json`` (the guidance log, the model wrapper's class).

    python tests/hf_trainer_worker.py OUT PER_DEVICE_BATCH
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import TrainingArguments

from gradguide.distributed import finish
from gradguide.guidance.engine import GuidedGradient
from gradguide.guidance.hf import GuidedTrainer
from gradguide.guidance.sgg import MagnitudePenalty
from gradguide.models import load_model
from gradguide.tasks import get_task


def lora_model() -> tuple[torch.nn.Module, Any]:
    """tiny-llama with LoRA on q/v, B moved off zero so that every LoRA weight has a gradient."""
    lm = load_model("tiny-llama", seed=0, attn_implementation="eager")  # for the exact HVP
    torch.manual_seed(0)  # LoRA's A is drawn from the global generator
    model = get_peft_model(lm.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model, lm.tokenizer


def rows(tokenizer: Any, n: int = 8) -> list[dict[str, list[int]]]:
    """Causal-LM rows "prompt + answer", the loss on the answer tokens only."""
    out = []
    for x in get_task("demo-sentiment").load("train")[:n]:
        prompt = tokenizer(x.prompt)["input_ids"]
        answer = tokenizer(x.candidates[x.gold], add_special_tokens=False)["input_ids"]
        out.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    return out


def collator(pad: int) -> Any:
    """Right padding; padding is masked and carries no label."""

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)

        def padded(key: str, fill: int) -> torch.Tensor:
            return torch.tensor([b[key] + [fill] * (width - len(b[key])) for b in batch])

        lengths = [len(b["input_ids"]) for b in batch]
        return {
            "input_ids": padded("input_ids", pad),
            "attention_mask": torch.tensor([[1] * n + [0] * (width - n) for n in lengths]),
            "labels": padded("labels", -100),
        }

    return collate


def trainer_for(
    out: Path,
    per_device: int,
    steps: int = 3,
    trainer_class: type = GuidedTrainer,
    hvp: str = "exact",
    **kw: Any,
) -> GuidedTrainer:
    """A GuidedTrainer (AdamW with weight decay) on :func:`lora_model` and :func:`rows`;
    ``kw`` goes to TrainingArguments."""
    model, tok = lora_model()
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        max_steps=steps,
        per_device_train_batch_size=per_device,
        learning_rate=5e-3,
        weight_decay=0.1,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        seed=0,
        **kw,
    )
    engine = GuidedGradient([MagnitudePenalty(0.5, tau=0.01)], hvp=hvp)
    trainer: GuidedTrainer = trainer_class(
        model=model,
        args=args,
        train_dataset=rows(tok),
        data_collator=collator(tok.pad_token_id),
        guidance=engine,
    )
    return trainer


def main(out: Path, per_device: int) -> None:
    trainer = trainer_for(out, per_device)
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    model = trainer.model
    assert model is not None
    params = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(params, str(out / f"rank{rank}.safetensors"))
    log = [
        {"loss": s.loss, "grad_norm": s.grad_norm, "guided_norm": s.guided_norm}
        for s in trainer.guidance_log
    ]
    wrapper = type(trainer.model_wrapped).__name__
    (out / f"rank{rank}.json").write_text(json.dumps({"log": log, "wrapper": wrapper}))
    # The DDP wrapper holds the process group: release it so that finish() really frees gloo's
    # worker threads before the interpreter shuts down (else a rank can abort at exit, SIGABRT).
    del trainer, model
    finish()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
