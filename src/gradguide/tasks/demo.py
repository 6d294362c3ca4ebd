"""The demo task: 48 short product/service reviews written for gradguide, shipped with the package.

It needs no data root, so examples, tutorials and tests can run anywhere. It is a demonstration
set, not a benchmark: its numbers say nothing about real data.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from gradguide.tasks.generic import TemplateTask, split_field
from gradguide.tasks.readers import read_jsonl

#: Folder of the data files that ship inside the package.
PACKAGE_DATA = Path(__file__).resolve().parent / "data"

DEMO_FILE = "demo_sentiment.jsonl"

TASK = TemplateTask(
    name="demo-sentiment",
    suite="demo",
    description=(
        "A small demonstration set written for gradguide (not a benchmark): 48 original short "
        "product/service reviews, positive or negative, 24 train and 24 test, balanced. Same "
        "prompt and label words as sst2; ships with the package, no data root needed."
    ),
    labels=("negative", "positive"),
    template="Review: {text}\nSentiment:",
    verbalizer={"negative": " negative", "positive": " positive"},
    split_files={"train": DEMO_FILE, "test": DEMO_FILE},
    read=partial(read_jsonl, encoding="utf-8"),
    train_split="train",
    eval_split="test",
    fields=("text",),
    select=split_field("split"),
    base_dir=PACKAGE_DATA,
)
