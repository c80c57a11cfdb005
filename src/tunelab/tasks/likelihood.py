"""Prompts for likelihood zero-shot: a decoder language model reads an instruction, a few
labelled examples (``--in-context K`` per class), then the text, and each class's words
are scored after it (tunelab.encoders.decoder.label_scores).

A prompt must fit the model's context. Examples are fitted to it (fewer per class when
K of them do not fit beside the longest text), the instruction is never cut, and a text
longer than half the context keeps its first tokens; what was used is recorded and said,
so that metrics.json never claims examples the model did not see.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from tunelab.core.errors import ConfigError, counted
from tunelab.encoders.decoder import label_scores

logger = logging.getLogger(__name__)


def in_context_examples(dataset, descriptions: dict[str, list[str]], per_class: int, seed: int) -> list[dict]:
    """``per_class`` training examples of each class (all of a smaller class), drawn with
    the seed and shuffled together, so no class always comes last in the prompt."""
    if not per_class:
        return []
    rng = np.random.default_rng(seed)
    train = dataset.splits["train"]
    chosen = []
    for index in range(len(dataset.class_names)):
        rows = np.flatnonzero(train.labels == index)
        chosen += list(rng.choice(rows, size=min(per_class, len(rows)), replace=False))
    chosen = [int(i) for i in rng.permutation(chosen)]
    pairs = train.inputs.pairs
    return [{"text": train.inputs.texts[i], **({"pair": pairs[i]} if pairs is not None else {}),
             "label": dataset.class_names[int(train.labels[i])],
             "answer": descriptions[dataset.class_names[int(train.labels[i])]][0]} for i in chosen]


def _shown(text: str, pair: str | None) -> str:
    return f"Text: {text}\n" + (f"Second text: {pair}\n" if pair is not None else "")


def likelihood_prompts(tokenizer, text: str, pair: str | None, template: str, examples: list[dict],
                       options: list[str]) -> tuple[str, str, str]:
    """(context, the template's words after the label, whitespace moved off the context)
    for one text: the instruction, the examples, the text, then the template's words
    before ``{}``. A trailing space belongs to the label's first token in byte-level
    vocabularies, so it moves from the context to the continuation."""
    prefix, suffix = template.split("{}", 1)
    stripped = prefix.rstrip()
    space = prefix[len(stripped):]
    intro = f"Classify the text. Labels: {', '.join(options)}.\n\n"
    shots = "".join(f"{_shown(e['text'], e.get('pair'))}{template.replace('{}', e['answer'])}\n\n"
                    for e in examples)
    if getattr(tokenizer, "chat_template", None):
        message = intro + shots + _shown(text, pair).rstrip()
        context = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                                add_generation_prompt=True)
        return context + stripped, suffix, space
    return intro + shots + _shown(text, pair) + stripped, suffix, space


@dataclasses.dataclass
class Prompting:
    """What every prompt of a run holds: the examples shown, and the most tokens a text
    (each text of a pair) keeps; ``context_tokens`` is the model's context used."""

    examples: list[dict]
    per_class: int = 0
    text_tokens: int | None = None
    context_tokens: int | None = None

    def record(self) -> dict:
        return {"examples": self.examples, "in_context": self.per_class, "text_token_cap": self.text_tokens,
                "context_tokens": self.context_tokens}

    @classmethod
    def from_record(cls, saved: dict) -> Prompting:
        """From a run's predictor.json (runs made before prompts were fitted hold the
        examples only)."""
        return cls(list(saved.get("examples") or []), int(saved.get("in_context") or 0),
                   saved.get("text_token_cap"), saved.get("context_tokens"))


def context_size(model, tokenizer, max_length: int) -> int:
    """The tokens a prompt and its label may take: --max-length, the model's positions
    and the tokenizer's own limit, whichever is smallest."""
    limits = [max_length, getattr(model.config, "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    return int(min(limit for limit in limits if isinstance(limit, int) and 0 < limit < 10**7))


def _length(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_prompts(model, tokenizer, dataset, descriptions: dict[str, list[str]], templates: list[str],
                per_class: int, seed: int, max_length: int, texts: list[str]) -> Prompting:
    """The most examples per class (at most ``per_class``) whose prompt, with the longest
    of ``texts`` (cut to half the context) and the longest label, fits the context."""
    budget = context_size(model, tokenizer, max_length)
    options = [descriptions[name][0] for name in descriptions]
    pairs = getattr(dataset.splits.get("train") or next(iter(dataset.splits.values())), "inputs", None)
    has_pairs = getattr(pairs, "pairs", None) is not None
    label = max(_length(tokenizer, space + d + suffix) for t in templates
                for _, suffix, space in [likelihood_prompts(tokenizer, "", None, t, [], options)]
                for ds in descriptions.values() for d in ds)
    cap = max(budget // (4 if has_pairs else 2), 1)
    longest = max((_length(tokenizer, t) for t in texts), default=0)
    need_text = min(longest, cap) * (2 if has_pairs else 1)

    def fits(k: int) -> bool:
        examples = in_context_examples(dataset, descriptions, k, seed) if k else []
        frame = max(_length(tokenizer, likelihood_prompts(tokenizer, "", "" if has_pairs else None, t, examples,
                                                          options)[0]) for t in templates)
        return frame + need_text + label + 2 <= budget  # 2: the special tokens a tokenizer may add

    if not fits(0):
        raise ConfigError(f"the model's context of {budget} tokens cannot hold the instruction, a text and a label; "
                          "raise --max-length (up to the model's limit) or use a model with a longer context")
    low, high = 0, per_class
    if per_class and not fits(per_class):
        high -= 1
        while low < high:  # the largest k that fits
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fits(middle) else (low, middle - 1)
    else:
        low = per_class
    if low < per_class:
        logger.warning("--in-context %d: %s per class fit the model's %d-token context beside the longest text; "
                       "the prompts hold those (recorded in metrics.json)", per_class, counted(low, "example"),
                       budget)
    over = sum(_length(tokenizer, t) > cap for t in texts)
    if over:
        logger.warning("%s longer than %d tokens keep their first %d in the prompt (the instruction%s is kept)",
                       counted(over, "text"), cap, cap, " and the examples" if low else "")
    return Prompting(in_context_examples(dataset, descriptions, low, seed) if low else [], low, cap, budget)


def _cut(tokenizer, text: str | None, tokens: int | None) -> str | None:
    if text is None or tokens is None:
        return text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= tokens else tokenizer.decode(ids[:tokens])


def likelihood_raw(model, tokenizer, inputs, descriptions: dict[str, list[str]], templates: list[str],
                   prompting: Prompting, config, device, desc: str) -> np.ndarray:
    """(texts, classes): each class's descriptions scored after each template's prompt,
    averaged over descriptions and templates. Each prompt runs through the model once."""
    names = list(descriptions)
    options = [descriptions[n][0] for n in names]
    owners = np.repeat(np.arange(len(names)), [len(descriptions[n]) for n in names])  # class of each description
    pairs = inputs.pairs or [None] * len(inputs.texts)
    total = np.zeros((len(inputs.texts), len(names)))
    context = prompting.context_tokens or config.features.max_length
    for template in templates:
        prompts = [likelihood_prompts(tokenizer, _cut(tokenizer, text, prompting.text_tokens),
                                      _cut(tokenizer, pair, prompting.text_tokens), template, prompting.examples,
                                      options)
                   for text, pair in zip(inputs.texts, pairs)]
        space, suffix = prompts[0][2], prompts[0][1]  # the template's: the same for every text
        scores = label_scores(model, tokenizer, [p[0] for p in prompts],
                              [space + d + suffix for n in names for d in descriptions[n]],
                              config.features.batch_size, device, config.runtime.precision, context, desc,
                              add_special_tokens=not getattr(tokenizer, "chat_template", None))
        for column in range(len(names)):
            total[:, column] += scores[:, owners == column].mean(1)
    return total / len(templates)
