"""Zero-shot classification of texts: no labelled example is learnt from.

- ``similarity`` (the default): each text's embedding (a sentence encoder, mean
  pooled) against each class's description, by cosine. A class is described by its
  name (or its meaning where the dataset defines one: Rotten Tomatoes' ``neg`` is
  "negative"), by ``--label-names``, or by ``--label-descriptions FILE``; ``--templates``
  ("a {} review") wraps each description, and a class's several descriptions and
  templates are averaged, as CLIP's prompt ensembles are.
- ``nli``: a cross-encoder trained on natural language inference scores the
  hypothesis "This example is {}." against each text; the entailment logits compete
  across classes (one class per text), or give each label its own entailment
  probability against contradiction (label sets), as transformers' zero-shot pipeline
  does.
- ``likelihood``: a decoder language model reads a prompt (the text, or both texts of a
  pair, then the template's words before ``{}``, e.g. "Label:") and each class's
  description is scored by its mean log-probability per token; with ``--in-context K``
  the prompt first shows K labelled training examples per class (drawn with the run's
  seed, recorded in the run). A tokenizer with a chat template gets the prompt as a
  user message and the label as the start of the reply.

``--calibrate`` subtracts each class's mean score over the (unlabelled) training texts,
so that a class whose description sits close to every text stops winning by default
("calibrate before use", Zhao et al., 2021). Label sets take the labels scoring at or
above a threshold chosen on validation (or ``--threshold``).

The zeroshot task (tunelab.tasks.zeroshot) calls this module for single texts; it holds
what text zero-shot does, the task holds the command.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from tunelab.core.errors import ConfigError, DataError, ModelError
from tunelab.core.files import (
    PREDICTOR_FILE,
    predictor_record,
    read_json_file,
    read_predictor,
    read_safetensors,
    read_yaml_file,
)
from tunelab.core.runtime import resolve_device, resolve_dtype
from tunelab.data.sources import KNOWN_DATASETS
from tunelab.data.text import TextInputs, resolved_data_config
from tunelab.encoders.clip import load_templates
from tunelab.encoders.decoder import load_causal_lm
from tunelab.encoders.features import FeatureCache, cached_features
from tunelab.encoders.text import TextFeatureExtractor, graph_outputs, normalize_rows
from tunelab.models.predictor import as_text_inputs, predictions_from
from tunelab.models.resolve import count_parameters_from_config, hub_kwargs, load_pretrained, load_tokenizer
from tunelab.problems import get_problem
from tunelab.tasks.contract import Outcome, Prepared, RunContext, Scored
from tunelab.tasks.likelihood import Prompting, fit_prompts, likelihood_raw
from tunelab.tasks.metrics_file import throughput

logger = logging.getLogger(__name__)

METHODS = ("similarity", "nli", "likelihood")
SIMPLE = {"similarity": ("{}",), "nli": ("This example is {}.",), "likelihood": ("Label: {}",)}
EMBEDDINGS_FILE = "label_embeddings.safetensors"


def class_descriptions(class_names: list[str], label_names: list[str] | None, descriptions_file: str | None,
                       dataset: str) -> dict[str, list[str]]:
    """Each class's descriptions: the file's, else --label-names, else the dataset's own
    meaning of its labels, else the class name. Bad input stops in one line."""
    if label_names is not None:
        if len(label_names) != len(class_names):
            raise ConfigError(f"--label-names gives {len(label_names)} names for {len(class_names)} classes "
                              f"({', '.join(class_names)}); give one per class, in that order")
        if any(not name.strip() for name in label_names):
            raise ConfigError("--label-names holds an empty name")
        folded = [name.strip().lower() for name in label_names]
        repeated = next((name for name in folded if folded.count(name) > 1), None)
        if repeated is not None:
            raise ConfigError(f"--label-names names two classes {repeated!r}; give each class its own name")
        described = {c: [n.strip()] for c, n in zip(class_names, label_names)}
    else:
        known = KNOWN_DATASETS.get(dataset)
        meaning = (known.label_text if known is not None else None) or {}
        described = {c: [meaning.get(c, c)] for c in class_names}
    if descriptions_file is None:
        return described
    path = Path(descriptions_file).expanduser()
    if not path.is_file():
        raise ConfigError(f"--label-descriptions {descriptions_file}: file not found")
    values = read_json_file(path) if path.suffix.lower() == ".json" else read_yaml_file(path)
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: give a mapping of label -> description (or a list of descriptions)")
    values = {str(k): v for k, v in values.items()}
    missing = [c for c in class_names if c not in values]
    if missing:
        raise ConfigError(f"{path} describes no {', '.join(repr(m) for m in missing[:5])}: describe every class "
                          f"({', '.join(class_names)})")
    unknown = [k for k in values if k not in class_names]
    if unknown:
        raise ConfigError(f"{path} describes {', '.join(repr(u) for u in unknown[:5])}, which the data does not "
                          f"have; classes: {', '.join(class_names)}")
    for name in class_names:
        texts = values[name] if isinstance(values[name], list) else [values[name]]
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ConfigError(f"{path}: the description of {name!r} must be a text or a list of texts")
        described[name] = [t.strip() for t in texts]
    return described


def prepare_texts(config, source, dataset) -> Prepared:
    """Single texts (``dataset`` read and checked): the descriptions and templates
    resolved, then the encoder (similarity) or the NLI cross-encoder loaded."""
    if not dataset.class_names:
        raise DataError(f"{config.data.dataset} holds numbers; text zero-shot picks classes (score sentence pairs "
                        "by similarity with --text-pair-column)")
    if config.method not in METHODS:
        raise ConfigError(f"--zeroshot-method {config.method}: choose {', '.join(METHODS)}")
    if config.in_context and config.method != "likelihood":
        raise ConfigError("--in-context puts labelled examples in a language model's prompt: it needs "
                          "--zeroshot-method likelihood")
    if config.method == "likelihood" and next(iter(dataset.splits.values())).labels.ndim == 2:  # label sets
        raise DataError(f"{config.data.dataset} holds label sets; --zeroshot-method likelihood picks one class per "
                        "text (use similarity or nli for label sets)")
    if config.templates == "ensemble":
        raise ConfigError("--templates ensemble holds CLIP's photo prompts; for text give templates holding {} "
                          "('a {} review', several separated by |) or a file of them")
    templates = load_templates(config.templates, SIMPLE[config.method])
    descriptions = class_descriptions(dataset.class_names, config.label_names, config.label_descriptions,
                                      config.data.dataset)
    eval_splits = dataset.eval_split_names(config.data.splits)
    if config.calibrate and "train" not in dataset.splits:
        raise DataError("--calibrate centres the scores on the training texts (their labels unused), and there "
                        "is no train split")
    config = dataclasses.replace(config, data=resolved_data_config(config.data, dataset, "bi"),
                                 features=dataclasses.replace(config.features,
                                                              pooling=config.features.pooling or "mean"))
    parts = {"templates": templates, "descriptions": descriptions}
    if config.method == "nli":
        parts.update(load_nli(source, config))
    elif config.method == "likelihood":
        if config.in_context and "train" not in dataset.splits:
            raise DataError("--in-context draws its examples from a train split, and there is none")
        parts["model"], parts["tokenizer"] = load_causal_lm(source, _dtype(config))
        scored = list(dict.fromkeys([*eval_splits, *(["train"] if config.calibrate else []),
                                     *(["validation"] if "validation" in dataset.splits else [])]))
        parts["prompting"] = fit_prompts(parts["model"], parts["tokenizer"], dataset, descriptions, templates,
                                         config.in_context, config.seed, config.features.max_length,
                                         [t for s in scored for t in dataset.splits[s].inputs.texts])
    else:
        parts["extractor"] = TextFeatureExtractor(source, config.features, config.runtime)
        parts["extractor"].load()
    return Prepared(config, source, dataset, eval_splits, {"text": parts})


def _dtype(config):
    return resolve_dtype(config.runtime.precision, resolve_device(config.runtime.device))


def load_nli(source, config) -> dict:
    """An NLI cross-encoder, with the indices of its entailment and contradiction outputs."""
    from transformers import AutoModelForSequenceClassification

    dtype = resolve_dtype(config.runtime.precision, resolve_device(config.runtime.device))
    model = load_pretrained(AutoModelForSequenceClassification, source.location, f"NLI model '{source.name}'",
                            dtype=dtype, **hub_kwargs(source))
    labels = {int(i): str(n).lower() for i, n in (model.config.id2label or {}).items()}
    entail = [i for i, n in labels.items() if n.startswith("entail")]
    contradict = [i for i, n in labels.items() if n.startswith("contradict")]
    if not entail:
        raise ModelError(f"'{source.name}' is not an NLI model: its outputs ({', '.join(labels.values())}) name no "
                         "entailment; --zeroshot-method nli needs one (e.g. cross-encoder/nli-MiniLM2-L6-H768)")
    return {"model": model.eval(), "tokenizer": load_tokenizer(source), "entailment": entail[0],
            "contradiction": contradict[0] if contradict else None}


# --------------------------------------------------------------------------- scoring


def label_embeddings(encode, descriptions: dict[str, list[str]], templates: list[str]) -> np.ndarray:
    """One unit vector per class: every template around every description, embedded,
    normalised, averaged and normalised again."""
    names = list(descriptions)
    prompts = [t.replace("{}", d) for n in names for d in descriptions[n] for t in templates]
    vectors = normalize_rows(encode(prompts))
    out, start = [], 0
    for name in names:
        count = len(descriptions[name]) * len(templates)
        out.append(vectors[start:start + count].mean(0))
        start += count
    return normalize_rows(np.stack(out))


def nli_logits(model, tokenizer, texts: list[str], hypotheses: dict[str, list[str]], config, device,
               desc: str) -> np.ndarray:
    """(texts, classes, NLI outputs): each text against each class's hypotheses (one per
    template and description), averaged per class."""
    from tunelab.encoders.graphs import ClassifierLogits  # here, not at the top: loads torch

    flat = [h for group in hypotheses.values() for h in group]
    pairs = TextInputs([t for t in texts for _ in flat], [h for _ in texts for h in flat])
    max_length = min(config.features.max_length, getattr(tokenizer, "model_max_length", 512) or 512)
    logits = graph_outputs(ClassifierLogits(model), tokenizer, pairs, max_length, config.features.batch_size,
                           device, config.runtime.precision, desc).reshape(len(texts), len(flat), -1)
    bounds = np.cumsum([0, *map(len, hypotheses.values())])
    return np.stack([logits[:, a:b].mean(1) for a, b in zip(bounds[:-1], bounds[1:])], axis=1)


def raw_scores(config, parts: dict, dataset, needs: list[str], context: RunContext, run) -> tuple[dict, str, dict]:
    """(split -> (texts, classes) scores, their kind, what the run records) of the method:
    entailment of each class's hypotheses, each label's likelihood after the prompt, or
    the cosine to each class's embedding."""
    problem = get_problem(dataset.problem)
    raw: dict[str, np.ndarray] = {}
    if config.method == "nli":
        hypotheses = {c: [t.replace("{}", d) for d in parts["descriptions"][c] for t in parts["templates"]]
                      for c in dataset.class_names}
        model = parts["model"].to(context.device)
        for split in needs:
            logits = nli_logits(model, parts["tokenizer"], dataset.splits[split].texts, hypotheses, config,
                                context.device, f"{split} texts x {sum(map(len, hypotheses.values()))} hypotheses")
            raw[split] = problem.read_entailment(logits, parts["entailment"], parts["contradiction"])
        return raw, "probability", {"hypotheses": hypotheses, "entailment": parts["entailment"],
                                    "contradiction": parts["contradiction"]}
    if config.method == "likelihood":
        model, prompting = parts["model"].to(context.device), parts["prompting"]
        for split in needs:
            raw[split] = likelihood_raw(model, parts["tokenizer"], dataset.splits[split].inputs,
                                        parts["descriptions"], parts["templates"], prompting, config,
                                        context.device, f"{split} texts x {len(dataset.class_names)} labels")
        # label log-likelihoods compete across the classes
        return raw, "probability", {**prompting.record(), "in_context_requested": config.in_context,
                                    "chat_template": bool(getattr(parts["tokenizer"], "chat_template", None)),
                                    "score": "mean log-probability per token of the label after the prompt"}
    extractor = parts["extractor"]
    embeddings = label_embeddings(lambda texts: extractor.encode(texts, "class descriptions"),
                                  parts["descriptions"], parts["templates"])
    cache = FeatureCache() if config.features.cache else None
    for split in needs:
        vectors, _ = cached_features(extractor, dataset.splits[split].texts, f"{split} features", cache)
        raw[split] = normalize_rows(vectors) @ embeddings.T
    from safetensors.numpy import save

    run.write_bytes(f"model/{EMBEDDINGS_FILE}", save({"embeddings": np.ascontiguousarray(embeddings,
                                                                                      dtype=np.float32)}))
    return raw, "similarity", {}


def execute_texts(prepared: Prepared, context: RunContext, command: str) -> Outcome | None:
    """Scores of every needed split against the classes; offsets from the training texts
    with --calibrate (a label-set threshold is the lifecycle's to choose, on validation)."""
    config, dataset, run = prepared.config, prepared.dataset, context.run
    parts = prepared.parts["text"]
    problem = get_problem(dataset.problem)
    needs = list(dict.fromkeys([*(["train"] if config.calibrate else []), *prepared.score_splits]))
    if context.rank != 0:  # one process scores (zero-shot has no training to share)
        return None
    start = time.perf_counter()
    raw, kind, record = raw_scores(config, parts, dataset, needs, context, run)
    offsets = np.zeros(len(dataset.class_names), dtype=np.float64)
    if config.calibrate:
        offsets = raw["train"].mean(0)
        raw = {split: values - offsets for split, values in raw.items()}
        record["calibration"] = {"texts": len(dataset.splits["train"]), "split": "train", "labels_used": False,
                                 "offsets": dict(zip(dataset.class_names, map(float, offsets)))}
    predictions = {split: Scored(problem.scores_from_matrix(raw[split], kind), dataset.splits[split].labels,
                                 dataset.splits[split].ids, dataset.splits[split].inputs.columns())
                   for split in prepared.score_splits}
    seconds = time.perf_counter() - start
    run.write_json(f"model/{PREDICTOR_FILE}", predictor_record(
        command, dataset.problem, dataset.class_names, kind=f"text-{config.method}", threshold=0.5,
        offsets=[float(o) for o in offsets], descriptions=parts["descriptions"], templates=parts["templates"],
        **{k: v for k, v in record.items() if k != "calibration"}))
    scored = sum(len(dataset.splits[s]) for s in prepared.eval_splits)
    return Outcome(
        scored=predictions, params={"total": count_parameters_from_config(prepared.source), "trainable": 0},
        seconds={"train": 0.0, "eval": seconds, **({"features_reused": reused} if (
            reused := getattr(parts.get("extractor"), "reused_seconds", 0.0)) else {})},
        throughput={"train_samples_per_s": None, "eval_samples_per_s": throughput(scored, seconds)},
        task={"text": {"method": config.method, "templates": parts["templates"],
                       "descriptions": parts["descriptions"], "score": kind, **record}},
        labels_seen=len(parts["prompting"].examples) if "prompting" in parts else 0,
    )


# --------------------------------------------------------------------------- predict


def text_predictor(run_dir: Path, config, source):
    """New texts scored as the run scored its splits: the saved class embeddings (or
    hypotheses), offsets and threshold."""
    saved = read_predictor(run_dir)
    names, problem = saved["class_names"], get_problem(saved.get("problem"))
    offsets = np.asarray(saved.get("offsets") or np.zeros(len(names)))
    threshold = saved.get("threshold", 0.5)
    if saved.get("kind") == "text-nli":
        parts = load_nli(source, config)
        device = resolve_device(config.runtime.device)
        model = parts["model"].to(device)

        def raw_scores(inputs):
            logits = nli_logits(model, parts["tokenizer"], inputs.texts, saved["hypotheses"], config, device,
                                "texts")
            return problem.read_entailment(logits, saved["entailment"], saved["contradiction"]), "probability"
    elif saved.get("kind") == "text-likelihood":
        device = resolve_device(config.runtime.device)
        model, tokenizer = load_causal_lm(source, _dtype(config))
        model.to(device)

        prompting = Prompting.from_record(saved)

        def raw_scores(inputs):
            return likelihood_raw(model, tokenizer, inputs, saved["descriptions"], saved["templates"], prompting,
                                  config, device, "texts"), "probability"
    else:
        embeddings = read_safetensors(run_dir / "model" / EMBEDDINGS_FILE)["embeddings"]
        extractor = TextFeatureExtractor(source, config.features, config.runtime)

        def raw_scores(inputs):
            return normalize_rows(extractor.encode(inputs.texts)) @ embeddings.T, "similarity"

    def predict(inputs) -> list:
        inputs = as_text_inputs(inputs)
        raw, kind = raw_scores(inputs)
        return predictions_from(inputs, problem.scores_from_matrix(raw - offsets, kind).with_threshold(threshold),
                                names)

    return predict
