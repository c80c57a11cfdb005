"""Decoder language models as zero-shot classifiers: how likely each label's words are
after a prompt. Prompts go in length-sorted, left-padded batches (each label follows
its prompt's last token); only the label's tokens are scored."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tunelab.core.errors import ModelError
from tunelab.core.progress import progress
from tunelab.encoders.text import ensure_padding, is_decoder
from tunelab.models.resolve import ModelSource, hub_kwargs, load_config, load_pretrained, load_tokenizer


def load_causal_lm(source: ModelSource, dtype=None):
    """(model, tokenizer) of a decoder language model; any other model stops in one line."""
    from transformers import AutoModelForCausalLM

    config = load_config(source)
    if not is_decoder(config):
        raise ModelError(f"'{source.name}' is a {getattr(config, 'model_type', 'unknown')} model; --zeroshot-method "
                         "likelihood needs a decoder language model (Qwen, Llama, Gemma, Mistral, Phi, ...)")
    extra = {"dtype": dtype} if dtype is not None else {}
    model = load_pretrained(AutoModelForCausalLM, source.location, f"language model '{source.name}'", **extra,
                            **hub_kwargs(source))
    return model.eval(), ensure_padding(load_tokenizer(source), source.name)


def _left_padded(sequences: list[list[int]], pad: int):
    """(ids, mask) of token lists padded on the left to the longest, so that what follows
    each sequence comes right after its last token."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, tokens in enumerate(sequences):
        ids[row, width - len(tokens):] = torch.tensor(tokens)
        mask[row, width - len(tokens):] = 1
    return ids, mask


def label_scores(model, tokenizer, contexts: Sequence[str], continuations: Sequence[str], batch_size: int, device,
                 precision: str = "fp32", max_length: int = 1024, desc: str = "prompts",
                 add_special_tokens: bool = True, reuse_cache: bool = True) -> np.ndarray:
    """(contexts, continuations): the mean log-probability per token of every
    continuation (a label's words) after every context (a label of two tokens does not
    lose to one of one by length alone). Each context runs through the model once: its
    keys and values are cached and every label's tokens run on top of them (the cache
    cut back after each), instead of the prompt once per label. Positions count real
    tokens only. A context too long loses its start (room is kept for the longest label).
    Without ``reuse_cache``, or for a model whose cache cannot be cut back or keeps a
    sliding window (which would lose the prompt), each label runs with its whole prompt.
    ``add_special_tokens``: False for chat-formatted contexts, which hold their own."""
    import torch

    continuation_ids = tokenizer(list(continuations), add_special_tokens=False)["input_ids"]
    if any(len(c) == 0 for c in continuation_ids):
        raise ModelError("a label's words give no tokens after the prompt; give it a name or description")
    longest = max(len(c) for c in continuation_ids)
    context_ids = [ids[-max(max_length - longest, 1):]
                   for ids in tokenizer(list(contexts), add_special_tokens=add_special_tokens)["input_ids"]]
    out = np.zeros((len(contexts), len(continuations)))
    order = np.argsort([len(c) for c in context_ids], kind="stable")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast, progress(len(contexts), desc, "prompt") as bar:
        for first in range(0, len(order), batch_size):
            batch = order[first:first + batch_size]
            ids, mask = (t.to(device) for t in _left_padded([context_ids[i] for i in batch], tokenizer.pad_token_id))
            prompt = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                           use_cache=reuse_cache)
            cache = prompt.past_key_values
            cached = reuse_cache and getattr(cache, "is_croppable", False) \
                and not any(getattr(cache, "is_sliding", None) or [])
            first_log_probs = torch.log_softmax(prompt.logits[:, -1].float(), dim=-1)
            lengths = mask.sum(1, keepdim=True)
            for column, tokens in enumerate(continuation_ids):
                taken = [first_log_probs[:, tokens[0]]]
                if len(tokens) > 1:  # the label's later tokens, each predicted from the ones before it
                    rest = torch.tensor(tokens[:-1], device=device).expand(len(batch), -1)
                    positions = lengths + torch.arange(len(tokens) - 1, device=device)
                    mask_on = torch.cat([mask, torch.ones_like(rest)], dim=1)
                    if cached:
                        logits = model(input_ids=rest, attention_mask=mask_on, position_ids=positions,
                                       past_key_values=cache, use_cache=True).logits
                        cache.crop(-(len(tokens) - 1))  # back to the prompt (negative: tokens to remove)
                    else:
                        logits = model(input_ids=torch.cat([ids, rest], dim=1), attention_mask=mask_on,
                                       position_ids=torch.cat([(mask.cumsum(1) - 1).clamp(min=0), positions], 1),
                                       use_cache=False).logits[:, ids.shape[1]:]
                    log_probs = torch.log_softmax(logits.float(), dim=-1)
                    taken += [log_probs[:, i, token] for i, token in enumerate(tokens[1:])]
                out[batch, column] = torch.stack(taken, dim=1).mean(1).cpu().numpy()
            bar.update(len(batch))
    return out
