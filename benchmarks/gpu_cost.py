"""Step time and peak device memory of plain LoRA and each guidance, on a ~1B Llama-style model.

The model is built from a config with random weights (no file and no network needed): the
TinyLlama-1.1B shape (hidden 2048, 22 blocks, 32 heads, 4 key-value heads, MLP 5632, vocabulary
32000), bf16 weights. The batch is 8 sequences of 256 random tokens; the loss is next-token cross
entropy over every position. Arms (each in turn on a fresh model; a step = forward, the guided
backward, AdamW):

* ``lora``: PEFT LoRA r=8 on q/v (adapter weights in fp32, as PEFT keeps them), SDPA attention;
* ``sgg-fd``, ``sgg-fd-lazy4``, ``sgg-exact``, ``sgg-exact-lazy4``: LoRA + SGG's direction and
  magnitude penalties, one HVP per (k-th) step; exact steps run SDPA on its math kernel. fd in
  bf16 weights is refused by ``gradguide train`` (its step is below bf16's resolution): its arm
  measures the cost only;
* ``lora-ckpt``, ``sgg-exact-ckpt``: the same with gradient checkpointing (non-reentrant);
* ``layernorm`` and ``ofa``: the normalisation gains, plain and with OFA's step-ratio and sharpness
  terms (exact JVP, which needs eager attention: the fd JVP is refused on bf16 weights; both
  arms eager);
* ``spectral``: LoRA + the spectral regulariser and filter (graph bases built once, on the CPU,
  before the timed steps; their build time is printed apart).

Time: the mean of ``--steps`` measured steps (a multiple of 4, so a lazy:4 arm's average includes
its HVP steps in proportion) after ``--warmup`` (CUDA synchronised around each step).
Memory: ``torch.cuda.max_memory_allocated`` over the measured steps (weights included), and the
weights alone. ``--tiny`` runs a tiny config (any device, seconds) to check the script itself.

    python benchmarks/gpu_cost.py [--tiny] [--device auto] [--arms lora,sgg-fd,...] [--json F]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from gradguide.device import enable_checkpointing, resolve_device
from gradguide.guidance.engine import GuidedGradient
from gradguide.guidance.ofa import OfaOptions, OfaSharpness, OfaStepRatio
from gradguide.guidance.priors import FixedPrior, unit
from gradguide.guidance.sgg import DirectionPenalty, MagnitudePenalty
from gradguide.guidance.spectral import SpectralGraphs, SpectralOptions
from gradguide.methods import MethodOptions, get_method
from gradguide.models import LoadedModel

LLAMA_1B = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    vocab_size=32000,
    max_position_embeddings=2048,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=256,
)
#: arm → (method, attention, SGG hvp or None, lazy, checkpointing, extra terms)
ARMS: dict[str, tuple[str, str, str | None, int, bool, str]] = {
    "lora": ("lora", "sdpa", None, 1, False, ""),
    "sgg-fd": ("lora", "sdpa", "fd", 1, False, ""),
    "sgg-fd-lazy4": ("lora", "sdpa", "fd", 4, False, ""),
    "sgg-exact": ("lora", "sdpa", "exact", 1, False, ""),
    "sgg-exact-lazy4": ("lora", "sdpa", "exact", 4, False, ""),
    "lora-ckpt": ("lora", "sdpa", None, 1, True, ""),
    "sgg-exact-ckpt": ("lora", "sdpa", "exact", 1, True, ""),
    "layernorm": ("layernorm", "eager", None, 1, False, ""),
    "ofa": ("layernorm", "eager", None, 1, False, "ofa"),
    "spectral": ("lora", "sdpa", None, 1, False, "spectral"),
}


def build_model(shape: dict[str, int], attn: str, device: torch.device) -> LoadedModel:
    """A Llama with random weights from ``shape``, bf16, created directly on ``device``."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(tie_word_embeddings=False, **shape)
    torch.manual_seed(0)
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(
                config, dtype=torch.bfloat16, attn_implementation=attn
            )
        except TypeError:  # transformers < 4.56 names it torch_dtype
            model = AutoModelForCausalLM.from_config(
                config, torch_dtype=torch.bfloat16, attn_implementation=attn
            )
    model.eval()
    return LoadedModel(model=model, tokenizer=None, kind="causal", name="llama-random")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_arm(
    name: str, shape: dict[str, int], device: torch.device, a: argparse.Namespace
) -> dict[str, Any]:
    """Build the arm's model, warm up, then time ``a.steps`` steps; return its figures."""
    method, attn, hvp, lazy, ckpt, extra = ARMS[name]
    lm = build_model(shape, attn, device)
    adapted = get_method(method).apply(lm, MethodOptions(lora_r=8))
    model = adapted.model
    if ckpt:
        enable_checkpointing(lm.model, name)
    model.train()
    params = list(adapted.trainable.values())
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, shape["vocab_size"], (a.batch, a.tokens), generator=gen).to(device)
    terms: list[Any] = []
    setup_s = 0.0
    if extra == "ofa":
        options = OfaOptions(jvp="exact")
        terms = [OfaStepRatio(model, options, 0), OfaSharpness(model, options, 0)]
    transform: Callable[[], None] | None = None
    if extra == "spectral":
        t0 = time.perf_counter()
        graphs = SpectralGraphs.build(model, adapted.trainable, "lora", SpectralOptions())
        setup_s = time.perf_counter() - t0
        terms = [_SpectralReg(graphs)]

        def transform() -> None:
            graphs.filter_(adapted.trainable)

    penalties = [] if hvp is None else [DirectionPenalty(0.1), MagnitudePenalty(0.1, tau=1.0)]
    n = sum(p.numel() for p in params)
    direction = unit(torch.randn(n, generator=gen)).to(device, params[0].dtype)
    engine = GuidedGradient(
        penalties, hvp=hvp or "fd", lazy=lazy, prior=FixedPrior(direction, "random")
    )
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step(k: int) -> float:
        for term in terms:
            term.begin_step(k)

        def loss_fn() -> torch.Tensor:
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            for term in terms:
                loss = loss + term.loss(adapted.trainable)
            return loss

        stats = engine.backward(loss_fn, params, k)
        if transform is not None:
            transform()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return stats.loss

    sync(device)
    weights_mb = _allocated_mb(device)
    losses = [step(k) for k in range(a.warmup)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for k in range(a.warmup, a.warmup + a.steps):
        sync(device)
        t0 = time.perf_counter()
        losses.append(step(k))
        sync(device)
        times.append(time.perf_counter() - t0)
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    for term in terms:
        getattr(term, "close", lambda: None)()
    out = {
        "arm": name,
        "step_ms": 1000 * statistics.mean(times),
        "step_ms_all": [round(1000 * t, 2) for t in times],
        "peak_mb": peak_mb,
        "weights_mb": weights_mb,
        "trainable": n,
        "trainable_dtype": str(params[0].dtype).removeprefix("torch."),
        "setup_s": setup_s,
        "finite": all(x == x and abs(x) != float("inf") for x in losses),
    }
    return out


class _SpectralReg:
    """The spectral regulariser as the loss term the loop adds (λ_spec = 0.1)."""

    def __init__(self, graphs: SpectralGraphs) -> None:
        self.graphs = graphs

    def begin_step(self, step: int) -> None:
        """Nothing to prepare."""

    def loss(self, params: dict[str, torch.nn.Parameter]) -> torch.Tensor:
        return 0.1 * self.graphs.energy(params)


def _allocated_mb(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny config: checks the script")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument(
        "--arms", default=",".join(ARMS), help="comma-separated, from: " + ", ".join(ARMS)
    )
    ap.add_argument("--steps", type=int, default=4, help="measured steps (a multiple of 4)")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    ap.add_argument("--batch", type=int, default=None, help="sequences (default 8; tiny 2)")
    ap.add_argument("--tokens", type=int, default=None, help="per sequence (default 256; tiny 32)")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    a.batch = a.batch or (2 if a.tiny else 8)
    a.tokens = a.tokens or (32 if a.tiny else 256)
    device = resolve_device(a.device)
    shape = TINY if a.tiny else LLAMA_1B
    arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    unknown = [x for x in arms if x not in ARMS]
    if unknown:
        ap.error(f"unknown arm {unknown[0]!r}; known: {', '.join(ARMS)}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {device} ({name}), torch {torch.__version__}, model "
        f"{'tiny' if a.tiny else 'llama-1.1B'} random bf16, batch {a.batch} x {a.tokens} tokens, "
        f"{a.warmup} warm-up + {a.steps} measured steps per arm",
        flush=True,
    )
    rows = []
    for arm in arms:
        started = time.perf_counter()
        try:
            row = run_arm(arm, shape, device, a)
        except Exception as err:  # one arm failing must not hide the others' figures
            row = {"arm": arm, "error": f"{type(err).__name__}: {err}"[:300]}
        row["wall_s"] = time.perf_counter() - started
        gc.collect()  # the arm's model and optimiser go before the next arm is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["arm"] == "lora" and "error" not in r), None)
    print(f"\n{'arm':<16} {'step ms':>9} {'x lora':>7} {'peak MiB':>9} {'x lora':>7}  notes")
    for r in rows:
        if "error" in r:
            print(f"{r['arm']:<16} failed: {r['error']}")
            continue
        t_ratio = r["step_ms"] / base["step_ms"] if base else None
        m_ratio = r["peak_mb"] / base["peak_mb"] if base and base["peak_mb"] else None
        notes = [f"weights {_fmt(r['weights_mb'], '.0f')} MiB", f"trainable {r['trainable']:,}"]
        if r["setup_s"]:
            notes.append(f"bases built in {r['setup_s']:.1f} s")
        if not r["finite"]:
            notes.append("NON-FINITE loss")
        if r["arm"].startswith("sgg-fd"):
            notes.append("cost only: fd in bf16 is refused for training")
        print(
            f"{r['arm']:<16} {r['step_ms']:>9.1f} {_fmt(t_ratio, '.2f'):>7} "
            f"{_fmt(r['peak_mb'], '.0f'):>9} {_fmt(m_ratio, '.2f'):>7}  {'; '.join(notes)}"
        )
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"device": name, "tiny": a.tiny, "rows": rows}, f, indent=1)
    return 1 if any("error" in r or not r.get("finite", False) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
