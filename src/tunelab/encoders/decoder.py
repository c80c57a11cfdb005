"""Decoder language models as zero-shot classifiers: how likely each label's words are
after a prompt. Sequences go in length-sorted, right-padded batches; only the
continuation's tokens are scored."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tunelab.core.errors import ModelError
from tunelab.models.resolve import ModelSource, hub_kwargs, load_config, load_pretrained


def load_causal_lm(source: ModelSource, dtype=None):
    """(model, tokenizer) of a decoder language model; any other model stops in one line."""
    from transformers import AutoModelForCausalLM

    from tunelab.encoders.text import ensure_padding, is_decoder
    from tunelab.models.resolve import load_tokenizer

    config = load_config(source)
    if not is_decoder(config):
        raise ModelError(f"'{source.name}' is a {getattr(config, 'model_type', 'unknown')} model; --zeroshot-method "
                         "likelihood needs a decoder language model (Qwen, Llama, Gemma, Mistral, Phi, ...)")
    extra = {"dtype": dtype} if dtype is not None else {}
    model = load_pretrained(AutoModelForCausalLM, source.location, f"language model '{source.name}'", **extra,
                            **hub_kwargs(source))
    return model.eval(), ensure_padding(load_tokenizer(source), source.name)


def continuation_scores(model, tokenizer, contexts: Sequence[str], continuations: Sequence[str], batch_size: int,
                        device, precision: str = "fp32", max_length: int = 1024, desc: str = "prompts",
                        add_special_tokens: bool = True) -> np.ndarray:
    """The mean log-probability per token of each continuation after its context (a
    label's words differ in length: the mean keeps a two-token label from losing to a
    one-token one by length alone). A context too long loses its start, not its end.
    ``add_special_tokens``: False for chat-formatted contexts, which hold their own."""
    import torch

    from tunelab.core.progress import progress

    context_ids = tokenizer(list(contexts), add_special_tokens=add_special_tokens)["input_ids"]
    continuation_ids = tokenizer(list(continuations), add_special_tokens=False)["input_ids"]
    if any(len(c) == 0 for c in continuation_ids):
        raise ModelError("a label's words give no tokens after the prompt; give it a name or description")
    sequences, starts = [], []
    for context, continuation in zip(context_ids, continuation_ids):
        keep = max(max_length - len(continuation), 1)
        context = context[-keep:]
        sequences.append(context + continuation)
        starts.append(len(context))
    order = np.argsort([len(s) for s in sequences], kind="stable")
    out = np.zeros(len(sequences))
    pad = tokenizer.pad_token_id
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast, progress(len(sequences), desc, "prompt") as bar:
        for first in range(0, len(order), batch_size):
            batch = order[first:first + batch_size]
            width = max(len(sequences[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                ids[row, :len(sequences[index])] = torch.tensor(sequences[index])
                mask[row, :len(sequences[index])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            log_probs = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t + 1
            taken = log_probs.gather(-1, ids[:, 1:].to(device)[..., None])[..., 0].cpu()
            for row, index in enumerate(batch):
                out[index] = float(taken[row, starts[index] - 1:len(sequences[index]) - 1].mean())
            bar.update(len(batch))
    return out
