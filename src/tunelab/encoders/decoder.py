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


def _padded(sequences: list[list[int]], pad: int, left: bool):
    """(ids, mask) of token lists padded to the longest: on the right, or on the left
    (so that what follows each sequence comes right after its last token)."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, tokens in enumerate(sequences):
        span = slice(width - len(tokens), width) if left else slice(0, len(tokens))
        ids[row, span] = torch.tensor(tokens)
        mask[row, span] = 1
    return ids, mask


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
            ids, mask = _padded([sequences[i] for i in batch], pad, left=False)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            log_probs = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t + 1
            taken = log_probs.gather(-1, ids[:, 1:].to(device)[..., None])[..., 0].cpu()
            for row, index in enumerate(batch):
                out[index] = float(taken[row, starts[index] - 1:len(sequences[index]) - 1].mean())
            bar.update(len(batch))
    return out


def label_scores(model, tokenizer, contexts: Sequence[str], continuations: Sequence[str], batch_size: int, device,
                 precision: str = "fp32", max_length: int = 1024, desc: str = "prompts",
                 add_special_tokens: bool = True) -> np.ndarray:
    """(contexts, continuations): the mean log-probability per token of every
    continuation after every context, as :func:`continuation_scores` computes it, but
    each context runs through the model once: its keys and values are cached and every
    label's few tokens run on top of them (the cache cut back after each), instead of
    the prompt once per label. Contexts are left-padded so the labels follow their last
    token; positions count real tokens only. A context too long loses its start (room is
    kept for the longest label). A model whose cache cannot be cut back, or keeps a
    sliding window, is scored the plain way."""
    import torch

    from tunelab.core.progress import progress

    continuation_ids = tokenizer(list(continuations), add_special_tokens=False)["input_ids"]
    if any(len(c) == 0 for c in continuation_ids):
        raise ModelError("a label's words give no tokens after the prompt; give it a name or description")
    longest = max(len(c) for c in continuation_ids)
    context_ids = [ids[-max(max_length - longest, 1):]
                   for ids in tokenizer(list(contexts), add_special_tokens=add_special_tokens)["input_ids"]]
    out = np.zeros((len(contexts), len(continuations)))
    order = np.argsort([len(c) for c in context_ids], kind="stable")
    pad = tokenizer.pad_token_id
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast, progress(len(contexts), desc, "prompt") as bar:
        for first in range(0, len(order), batch_size):
            batch = order[first:first + batch_size]
            ids, mask = _padded([context_ids[i] for i in batch], pad, left=True)
            ids, mask = ids.to(device), mask.to(device)
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            prompt = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            cache = prompt.past_key_values
            if not getattr(cache, "is_croppable", False) or any(getattr(cache, "is_sliding", None) or []):
                # (a sliding-window layer keeps only its window: cutting it back loses the prompt)
                return _plain_label_scores(model, tokenizer, contexts, continuations, batch_size, device, precision,
                                           max_length, desc, add_special_tokens)
            first_log_probs = torch.log_softmax(prompt.logits[:, -1].float(), dim=-1)
            lengths = mask.sum(1, keepdim=True)
            for column, tokens in enumerate(continuation_ids):
                label = torch.tensor(tokens, device=device).expand(len(batch), -1)
                taken = [first_log_probs[:, tokens[0]]]
                if len(tokens) > 1:
                    step = model(input_ids=label[:, :-1], past_key_values=cache, use_cache=True,
                                 attention_mask=torch.cat([mask, torch.ones_like(label[:, :-1])], dim=1),
                                 position_ids=lengths + torch.arange(len(tokens) - 1, device=device))
                    log_probs = torch.log_softmax(step.logits.float(), dim=-1)
                    taken += [log_probs[:, i, token] for i, token in enumerate(tokens[1:])]
                    cache.crop(-(len(tokens) - 1))  # back to the prompt (negative: tokens to remove)
                out[batch, column] = torch.stack(taken, dim=1).mean(1).cpu().numpy()
            bar.update(len(batch))
    return out


def _plain_label_scores(model, tokenizer, contexts, continuations, batch_size, device, precision, max_length, desc,
                        add_special_tokens) -> np.ndarray:
    pairs = [(c, d) for c in contexts for d in continuations]
    scores = continuation_scores(model, tokenizer, [c for c, _ in pairs], [d for _, d in pairs], batch_size, device,
                                 precision, max_length, desc, add_special_tokens)
    return scores.reshape(len(contexts), len(continuations))
