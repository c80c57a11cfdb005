"""Serving without PyTorch: a fine-tuned text classifier exported to ONNX (optionally
quantised to int8), checked against PyTorch on real inputs, and run through ONNX
Runtime by ``tunelab predict RUN --backend onnx``.

``RUN/onnx/`` holds ``model.onnx`` (and ``model.int8.onnx``), the tokenizer, and
``export.json``: the largest logit difference to PyTorch (export fails above
1e-4) and the int8 model's accuracy change on the run's own test predictions
(measured and recorded, not enforced).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from tunelab.core.errors import TunelabError
from tunelab.core.files import read_json_file, read_predictor
from tunelab.problems import get_problem

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
TOLERANCE = 1e-4  # largest |logit difference| to PyTorch that an export may have
OPSET = 17


def _require(package: str):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise TunelabError(f"ONNX export and the onnx backend need {package}: pip install 'tunelab[onnx]'") from None


def check_texts_of(run_dir: Path, limit: int = 256) -> tuple[list, list[str] | None]:
    """Real inputs to check an export with: the run's own test (else validation) predictions,
    and their gold labels."""
    import csv

    for split in ("test", "validation"):
        path = run_dir / "predictions" / f"{split}.csv"
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
            if rows:
                inputs = [(r["text"], r["text_pair"]) if "text_pair" in r else r["text"] for r in rows]
                return inputs, [r.get("label") for r in rows]
    raise TunelabError(f"{run_dir} has no predictions to check an export against")


def export_onnx(run_dir: str | Path, quantize: str | None = None) -> dict:
    """Export a finished fine-tuning run's model to ``RUN/onnx``; returns the record
    written to ``RUN/onnx/export.json``."""
    import torch

    from tunelab.core.config import config_from_run
    from tunelab.core.runs import atomic_write_bytes, lock_run_directory
    from tunelab.scoring.predictors import as_text_inputs, run_command
    from tunelab.tasks.finetune import FinetuneConfig, effective_max_length, load_finetuned

    run_dir = Path(run_dir)
    if run_command(run_dir) != "finetune":
        raise TunelabError(f"{run_dir} is not a fine-tuning run; ONNX export covers text classification runs")
    if quantize not in (None, "int8"):
        raise TunelabError(f"--quantize {quantize}: the supported quantisation is int8")
    _require("onnx")
    ort = _require("onnxruntime")
    config = config_from_run(FinetuneConfig, run_dir)
    model, tokenizer = load_finetuned(run_dir, config)
    from tunelab.models.biencoder import BiEncoder

    if isinstance(model, BiEncoder):
        raise TunelabError("ONNX export covers sequence classifiers (single texts and jointly encoded pairs); "
                           "this run is a bi-encoder")
    if hasattr(model, "merge_and_unload"):  # a run saved before model/ held merged weights
        model = model.merge_and_unload()
    model = model.float().eval()
    max_length = effective_max_length(tokenizer, model, config.train.max_length)
    raw_inputs, gold = check_texts_of(run_dir)
    inputs = as_text_inputs(raw_inputs)
    sample = _encode(tokenizer, inputs, max_length, slice(0, 2))
    names = list(sample)
    target = run_dir / ONNX_DIR
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise TunelabError(f"{target} is not a folder tunelab made (a symbolic link or a file); remove it, then "
                           "export again")
    lock = lock_run_directory(run_dir, create_marker=False)
    staging = run_dir / f".{ONNX_DIR}.tunelab-new"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        path = staging / "model.onnx"
        axes = {name: {0: "batch", 1: "sequence"} for name in names}
        axes["logits"] = {0: "batch"}
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python control flow: checked below instead
            torch.onnx.export(model, (), str(path), kwargs={k: torch.from_numpy(v) for k, v in sample.items()},
                              input_names=names, output_names=["logits"], dynamic_axes=axes, opset_version=OPSET,
                              dynamo=False)
        tokenizer.save_pretrained(str(staging))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        reference = _torch_logits(model, tokenizer, inputs, max_length)
        exported = onnx_logits(session, tokenizer, inputs, max_length)
        difference = float(np.abs(reference - exported).max())
        if difference > TOLERANCE:
            raise TunelabError(f"the exported model's logits differ from PyTorch's by {difference:.2e} "
                               f"(more than {TOLERANCE:g}); nothing was exported")
        record = {"format": "onnx", "opset": OPSET, "inputs": names, "checked_examples": len(inputs),
                  "max_abs_logit_difference": difference, "tolerance": TOLERANCE,
                  "problem": get_problem(config.data.problem).name, "max_length": max_length}
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = staging / "model.int8.onnx"
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # the quantiser's advice goes to the root logger, not to users
            try:
                quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8)
            finally:
                root.setLevel(level)
            int8 = onnx_logits(ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"]),
                               tokenizer, inputs, max_length)
            record["int8"] = _int8_change(reference, int8, gold, model)
        atomic_write_bytes(staging / "export.json", (json.dumps(record, indent=2) + "\n").encode())
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if lock is not None:
            lock.close()
    logger.info("exported %s (largest logit difference to PyTorch %.2e)", run_dir / ONNX_DIR, difference)
    return record


def _int8_change(reference: np.ndarray, int8: np.ndarray, gold: list[str] | None, model) -> dict:
    """How much int8 changes the predictions: agreement with fp32, and accuracy on the
    run's labelled examples where it has them."""
    change = {"agreement_with_fp32": float(np.mean(reference.argmax(-1) == int8.argmax(-1)))
              if reference.shape[-1] > 1 else None,
              "max_abs_logit_difference": float(np.abs(reference - int8).max())}
    id2label = getattr(model.config, "id2label", {}) or {}
    if gold and reference.shape[-1] > 1 and all(g is not None for g in gold):
        names = np.asarray([id2label.get(i, str(i)) for i in range(reference.shape[-1])])
        gold_array = np.asarray(gold)
        fp32 = float(np.mean(names[reference.argmax(-1)] == gold_array))
        quantized = float(np.mean(names[int8.argmax(-1)] == gold_array))
        change.update(accuracy_fp32=fp32, accuracy_int8=quantized, accuracy_change=quantized - fp32)
    return change


def _encode(tokenizer, inputs, max_length: int, rows=None) -> dict[str, np.ndarray]:
    from tunelab.encoders.text import pad_batch, pad_token_id, tokenize_inputs

    ids, types = tokenize_inputs(tokenizer, inputs, max_length)
    if rows is not None:
        ids, types = ids[rows], (types[rows] if types else None)
    tensors = pad_batch(ids, pad_token_id(tokenizer), types)
    names = ("input_ids", "attention_mask", "token_type_ids")
    return {name: tensor.numpy() for name, tensor in zip(names, tensors)}


def _torch_logits(model, tokenizer, inputs, max_length: int, batch_size: int = 32) -> np.ndarray:
    import torch

    from tunelab.encoders.text import pad_token_id, sorted_padded_batches, tokenize_inputs

    ids, types = tokenize_inputs(tokenizer, inputs, max_length)
    out = None
    with torch.inference_mode():
        for batch, tensors in sorted_padded_batches(ids, batch_size, pad_token_id(tokenizer), "cpu", types):
            logits = model(**tensors).logits.float().numpy()
            out = np.empty((len(ids), logits.shape[1]), dtype=np.float32) if out is None else out
            out[batch] = logits
    return out


def onnx_logits(session, tokenizer, inputs, max_length: int, batch_size: int = 32) -> np.ndarray:
    """Logits from an ONNX Runtime session, over length-sorted, dynamically padded batches."""
    from tunelab.encoders.text import pad_token_id, sorted_padded_batches, tokenize_inputs

    wanted = {i.name for i in session.get_inputs()}
    ids, types = tokenize_inputs(tokenizer, inputs, max_length)
    out = None
    for batch, tensors in sorted_padded_batches(ids, batch_size, pad_token_id(tokenizer), "cpu", types):
        feed = {name: tensor.numpy() for name, tensor in tensors.items() if name in wanted}
        logits = session.run(["logits"], feed)[0]
        out = np.empty((len(ids), logits.shape[1]), dtype=np.float32) if out is None else out
        out[batch] = logits
    return out


def onnx_predictor(run_dir: str | Path, int8: bool = False):
    """``predict`` through ONNX Runtime: no PyTorch model is loaded."""
    from transformers import AutoTokenizer

    from tunelab.models.resolve import load_pretrained
    from tunelab.scoring.predictors import as_text_inputs, predictions_from
    from tunelab.tasks.finetune import scores_from_outputs

    ort = _require("onnxruntime")
    folder = Path(run_dir) / ONNX_DIR
    file = folder / ("model.int8.onnx" if int8 else "model.onnx")
    if not file.is_file():
        hint = " --quantize int8" if int8 else ""
        raise TunelabError(f"{file} does not exist; create it with: tunelab export {run_dir} --format onnx{hint}")
    record = read_json_file(folder / "export.json")
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    tokenizer = load_pretrained(AutoTokenizer, folder, f"the tokenizer in {folder}")
    saved = read_predictor(run_dir)

    def predict(inputs) -> list:
        inputs = as_text_inputs(inputs)
        start = time.perf_counter()
        logits = onnx_logits(session, tokenizer, inputs, record["max_length"])
        logger.debug("onnx: %d inputs in %.3f s", len(inputs), time.perf_counter() - start)
        scores = scores_from_outputs(logits, saved["problem"], saved.get("threshold", 0.5))
        return predictions_from(inputs, scores, saved["class_names"])

    return predict
