"""SGG in the Hugging Face Trainer: GuidedTrainer is a Trainer with a guided backward pass.

    .venv/bin/python examples/sgg_hf_trainer.py [--model smollm2-135m] [--steps 6]

Trains LoRA (PEFT) on the demo task with the ordinary causal-LM loss on "prompt + answer".
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from peft import LoraConfig, get_peft_model
from transformers import TrainingArguments

from gradguide.distributed import finish
from gradguide.guidance.engine import GuidedGradient
from gradguide.guidance.hf import GuidedTrainer
from gradguide.guidance.sgg import MagnitudePenalty
from gradguide.models import load_model
from gradguide.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model(a.model)
    model = get_peft_model(lm.model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    tok = lm.tokenizer
    rows = []
    for x in get_task("demo-sentiment").load("train"):
        prompt = tok(x.prompt)["input_ids"]
        answer = tok(x.candidates[x.gold], add_special_tokens=False)["input_ids"]
        rows.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})

    def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        pad = tok.pad_token_id
        return {
            "input_ids": torch.tensor(
                [b["input_ids"] + [pad] * (width - len(b["input_ids"])) for b in batch]
            ),
            "attention_mask": torch.tensor(
                [[1] * len(b["input_ids"]) + [0] * (width - len(b["input_ids"])) for b in batch]
            ),
            "labels": torch.tensor(
                [b["labels"] + [-100] * (width - len(b["labels"])) for b in batch]
            ),
        }

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        max_steps=a.steps,
        per_device_train_batch_size=4,
        learning_rate=5e-4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    engine = GuidedGradient([MagnitudePenalty(0.5, tau=None)], hvp="fd")
    trainer = GuidedTrainer(
        model=model, args=args, train_dataset=rows, data_collator=collate, guidance=engine
    )
    trainer.train()
    for step, s in enumerate(trainer.guidance_log):
        print(f"step {step}: loss {s.loss:.4f} |g| {s.grad_norm:.4f} penalties {s.penalties}")
    finish()  # under torchrun: leave the process group before exit (gloo aborts otherwise)


if __name__ == "__main__":
    main()
