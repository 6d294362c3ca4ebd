"""Prompt tuning through PEFT (``PromptTuningConfig``): a trained soft prompt, the model frozen.

The soft prompt is PEFT's: ``get_peft_model`` builds it (initialised from ``prompt_init_text``
with the model's own tokenizer, or at random), and saving is PEFT's ``save_pretrained``, so a
saved prompt loads with ``PeftModel.from_pretrained(base, dir)``.

**Why the model is wrapped.** PEFT 0.21's ``PeftModelForCausalLM.forward`` (and the
feature-extraction one) handles prompt learning by concatenating the virtual tokens in front of
the whole row and a block of ones in front of the attention mask, and it *drops* ``position_ids``
(``_adjust_prompt_learning_kwargs`` warns "Position ids are not supported ... Ignoring position
ids" and sets them to None; ``token_type_ids`` likewise). gradguide's scorer left-pads rows, so a
padded row becomes ``[virtual][pad … pad][real tokens]`` with positions ``0 … T+V-1``: the real
tokens' positions, and with RoPE their distance to the soft prompt, grow with the amount of
padding, so a row's score depends on which other rows share its batch.

:class:`PromptTuned` keeps PEFT's prompt encoder and base model but builds the input itself:
it embeds the ids, inserts the virtual tokens *right before each row's first real token*
(``[pad … pad][virtual][real tokens]``), extends the attention mask (and token types) to match,
and gives positions ``0 … V-1`` to the virtual tokens and the caller's positions shifted by ``V``
to the real ones. Every row then sees exactly what it would see alone, padded or not. On an
unpadded row this is precisely PEFT's own computation (virtual tokens first, positions
``0 … T+V-1``), so PEFT's model and the wrapper agree wherever PEFT is correct.

A call that continues a KV cache (``cache``/``past_key_values``, as the scorer does for a shared
in-context prefix) finds the soft prompt already in the cache from the first call: nothing is
inserted again, the virtual positions are restored in the mask and new positions move up by V.

Outputs keep the caller's sequence length where it matters: with ``logits_to_keep=K`` the last
``K`` positions are the last ``K`` input positions (virtual tokens sit before the first real
token, never inside the kept window of real tokens); full-length ``logits`` and encoder
``last_hidden_state`` have the virtual positions removed, so mean pooling over the caller's mask
works unchanged.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def insertion_index(first_real: torch.Tensor, length: int, n_virtual: int) -> torch.Tensor:
    """Source index into ``cat([row, virtual])`` of every position of the extended row.

    Positions before ``first_real`` keep the row's own (padding) entries, the next ``n_virtual``
    take the virtual tokens (stored after the row, at ``length …``), the rest are the row's real
    entries shifted by ``n_virtual``. Shape [batch, length + n_virtual].
    """
    pos = torch.arange(length + n_virtual, device=first_real.device).unsqueeze(0)
    start = first_real.unsqueeze(1)
    virtual = length + (pos - start)
    return torch.where(
        pos < start, pos, torch.where(pos < start + n_virtual, virtual, pos - n_virtual)
    )


def _gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[b, index[b, j]]`` for 2-D or 3-D ``values`` (the trailing dim kept)."""
    if values.dim() == 2:
        return values.gather(1, index)
    return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


class PromptTuned(torch.nn.Module):
    """A PEFT prompt-tuning model whose forward is correct for left-padded batches.

    Called like the base model (``input_ids``, ``attention_mask``, ``position_ids``,
    ``logits_to_keep``, …). ``peft_model`` is the PEFT model, used for saving.
    """

    def __init__(self, peft_model: Any) -> None:
        super().__init__()
        self.peft_model = peft_model

    @property
    def config(self) -> Any:
        """The base model's transformers config."""
        return self.peft_model.get_base_model().config

    @property
    def n_virtual(self) -> int:
        """Number of virtual (soft-prompt) tokens."""
        return int(self.peft_model.active_peft_config.num_virtual_tokens)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Insert the soft prompt before each row's first real token and run the base model."""
        base = self.peft_model.get_base_model()
        if inputs_embeds is None:
            if input_ids is None:
                raise GradguideError("prompt tuning needs input_ids or inputs_embeds")
            inputs_embeds = base.get_input_embeddings()(input_ids)
        call: dict[str, Any] = dict(kwargs)
        if cache is not None:
            call["cache"] = cache
        past = cache if cache is not None else kwargs.get("past_key_values")
        get_length = getattr(past, "get_seq_length", None)
        past_len = int(get_length()) if callable(get_length) else 0
        if past_len > 0:
            return self._continue(base, inputs_embeds, attention_mask, position_ids, past_len, call)
        batch, length = inputs_embeds.shape[:2]
        v = self.n_virtual
        device = inputs_embeds.device
        prompts = self.peft_model.get_prompt(batch_size=batch).to(inputs_embeds.dtype)
        first_real = _first_real(attention_mask, batch, device)
        index = insertion_index(first_real, length, v)
        embeds = _gather_rows(torch.cat([inputs_embeds, prompts.to(device)], dim=1), index)
        if attention_mask is not None:
            ones = torch.ones(batch, v, dtype=attention_mask.dtype, device=device)
            call["attention_mask"] = _gather_rows(torch.cat([attention_mask, ones], 1), index)
        if position_ids is not None:
            shifted = position_ids.expand(batch, length) + v
            virtual = torch.arange(v, device=device, dtype=shifted.dtype).expand(batch, v)
            call["position_ids"] = _gather_rows(torch.cat([shifted, virtual], 1), index)
        if token_type_ids is not None:
            zeros = torch.zeros(batch, v, dtype=token_type_ids.dtype, device=device)
            call["token_type_ids"] = _gather_rows(torch.cat([token_type_ids, zeros], 1), index)
        if labels is not None:
            ignore = torch.full((batch, v), -100, dtype=labels.dtype, device=device)
            call["labels"] = _gather_rows(torch.cat([labels, ignore], 1), index)
        out = base(inputs_embeds=embeds, **call)
        # Map full-length outputs back onto the caller's positions (virtual ones removed).
        pos = torch.arange(length, device=device).unsqueeze(0)
        back = torch.where(pos < first_real.unsqueeze(1), pos, pos + v)
        for key in ("logits", "last_hidden_state"):
            value = out.get(key) if hasattr(out, "get") else None
            if isinstance(value, torch.Tensor) and value.shape[1] == length + v:
                out[key] = _gather_rows(value, back)
        return out

    def _continue(
        self,
        base: torch.nn.Module,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        past_len: int,
        call: dict[str, Any],
    ) -> Any:
        """Continue a KV cache built by this wrapper: the soft prompt is already inside it.

        The caller's mask covers ``cached + new`` tokens without the virtual ones; they are put
        back where the first call inserted them (before the first real cached token), and new
        positions move up by ``V``. Nothing is inserted into the new tokens.
        """
        batch, length = embeds.shape[:2]
        v = self.n_virtual
        if attention_mask is not None:
            cached = attention_mask.shape[1] - length
            if cached + v != past_len:
                raise GradguideError(
                    f"prompt tuning: the cache holds {past_len} positions, expected the "
                    f"{cached} cached tokens plus {v} virtual ones (was it built by this model?)"
                )
            head = attention_mask[:, :cached]
            ones = torch.ones(batch, v, dtype=head.dtype, device=head.device)
            index = insertion_index(_first_real(head, batch, head.device), cached, v)
            head = _gather_rows(torch.cat([head, ones], 1), index)
            call["attention_mask"] = torch.cat([head, attention_mask[:, cached:]], dim=1)
        if position_ids is not None:
            call["position_ids"] = position_ids + v
        return base(inputs_embeds=embeds, **call)


def _first_real(mask: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
    """Index of each row's first attended token (0 for rows without a mask)."""
    if mask is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    return (mask != 0).long().argmax(dim=1)


def _prompt_config(lm: LoadedModel, options: MethodOptions, tokenizer_dir: str) -> Any:
    """The PEFT ``PromptTuningConfig`` for these options (TEXT init reads ``tokenizer_dir``)."""
    from peft import PromptTuningConfig, PromptTuningInit, TaskType

    if options.prompt_tokens < 1:
        raise GradguideError("prompt_tokens must be at least 1", field="prompt_tokens")
    task = TaskType.CAUSAL_LM if lm.kind == "causal" else TaskType.FEATURE_EXTRACTION
    if options.prompt_init == "text":
        if not options.prompt_init_text.strip():
            raise GradguideError("prompt_init_text is empty", field="prompt_init_text")
        return PromptTuningConfig(
            task_type=task,
            num_virtual_tokens=options.prompt_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=options.prompt_init_text,
            tokenizer_name_or_path=tokenizer_dir,
        )
    if options.prompt_init == "random":
        return PromptTuningConfig(
            task_type=task,
            num_virtual_tokens=options.prompt_tokens,
            prompt_tuning_init=PromptTuningInit.RANDOM,
        )
    raise GradguideError(
        f"prompt_init must be 'text' or 'random', not {options.prompt_init!r}", field="prompt_init"
    )


@dataclass
class PromptOptions:
    """Prompt tuning's settings (``method_options.prompt_*``)."""

    prompt_tokens: int = option(20, "soft prompt length")
    prompt_init: str = "text"
    prompt_init_text: str = "Classify the text and answer with the right word."


class PromptTuning:
    """PEFT prompt tuning: ``prompt_tokens`` trained input embeddings, everything else frozen."""

    name = "prompt"
    trains = True
    # A handful of embedding vectors on the scale of word embeddings: prompt tuning needs large
    # steps (Lester et al. used 0.3 with Adafactor); 3e-2 is the usual AdamW equivalent.
    default_lr = 3e-2
    default_guidance = ""
    role = "baseline"
    report_rank = 60
    step_factor = 1.0
    eval_factor = 1.0
    description = "prompt tuning (PEFT): a trained soft prompt before the input"
    options = PromptOptions
    #: its options are hashed into every run's key (as before options were scoped: stored
    #: runs keep their keys), not only its own runs' (methods/base.py options_scoped_out)
    options_scoped = False

    def apply(self, lm: LoadedModel, options: MethodOptions) -> Adapted:
        """Build the soft prompt with PEFT and wrap it so left-padded batches score correctly."""
        from peft import get_peft_model

        was_training = lm.model.training
        # PEFT's TEXT init loads a tokenizer by path: hand it the model's own tokenizer.
        with tempfile.TemporaryDirectory(prefix="gradguide-tok-") as tokenizer_dir:
            config = _prompt_config(lm, options, tokenizer_dir)
            if options.prompt_init == "text":
                lm.tokenizer.save_pretrained(tokenizer_dir)
            with quiet_peft():
                peft_model = get_peft_model(lm.model, config)
        # Record the base model rather than the deleted temporary folder.
        peft_model.peft_config["default"].tokenizer_name_or_path = lm.name
        wrapper = PromptTuned(peft_model)
        wrapper.train(was_training)
        return adapted_from(
            wrapper, self.name, options, info={"virtual_tokens": options.prompt_tokens}
        )

    def save(self, adapted: Adapted, out_dir: Path, base_model: str) -> None:
        """Save the soft prompt in PEFT format plus adapter_meta.json."""
        if not isinstance(adapted.model, PromptTuned):
            raise GradguideError("prompt.save expects a model adapted by the prompt method")
        save_peft(adapted.model.peft_model, adapted, out_dir, base_model)

    def load(self, lm: LoadedModel, out_dir: Path, options: MethodOptions) -> Adapted:
        """Load the soft prompt with ``PeftModel.from_pretrained`` and make it trainable again."""
        meta = read_meta(out_dir, self.name, lm)
        was_training = lm.model.training
        # PEFT refuses is_trainable=True for prompt learning: load for inference, then unfreeze.
        peft_model = load_peft(lm.model, out_dir, trainable=False)
        peft_model.active_peft_config.inference_mode = False
        for param in peft_model.prompt_encoder.parameters():
            param.requires_grad_(True)
        wrapper = PromptTuned(peft_model)
        wrapper.train(was_training)
        loaded = saved_options(meta, options)
        return adapted_from(wrapper, self.name, loaded, info={"virtual_tokens": wrapper.n_virtual})
