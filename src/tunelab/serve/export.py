"""Serving without PyTorch: the transformer part of a run's predictor (a fine-tuned
classifier's logits, of texts or images, a bi-encoder's embedding, a text probe's pooled features) exported
to ONNX (optionally quantised to int8), checked against PyTorch on real inputs, and run
through ONNX Runtime by ``tunelab predict RUN --backend onnx``, with the task's own
predictor (head, classifier, threshold) around it.

``RUN/onnx/`` holds ``model.onnx`` (and ``model.int8.onnx``), the tokenizer (or image processor), and
``export.json``: the largest output difference to PyTorch (export fails above 1e-4,
relative to the largest value for pooled vectors), how often the served labels agree,
and the int8 model's accuracy change on the run's own test predictions (measured and
recorded, not enforced).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tunelab.core.config import config_from_run
from tunelab.core.errors import TunelabError
from tunelab.core.files import read_json_file
from tunelab.core.registry import all_tasks, get_task
from tunelab.core.safety import atomic_write_bytes, lock_run_directory
from tunelab.data.image_pipeline import image_outputs, pixel_batches
from tunelab.encoders.text import graph_outputs, pad_batch, pad_token_id, sorted_padded_batches, tokenize_inputs
from tunelab.models.predictor import as_text_inputs, run_command
from tunelab.models.resolve import load_pretrained
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


def check_texts_of(run_dir: Path, limit: int = 256, image_root: Path | None = None
                   ) -> tuple[list, list[str] | None, list[str]]:
    """Real inputs to check an export with: the run's own test (else validation) inputs
    (texts, pairs, or image files under ``image_root``), their gold labels, and the run's
    own predictions for them."""
    import csv

    for split in ("test", "validation"):
        path = run_dir / "predictions" / f"{split}.csv"
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))[:limit]
            if not rows:
                continue
            if image_root is not None:
                inputs = [str(image_root / r["file"]) for r in rows]
                if not Path(inputs[0]).is_file():
                    raise TunelabError(f"the run's images are no longer under {image_root} ({rows[0]['file']}); "
                                       "export checks the model on them")
            else:
                inputs = [(r["text"], r["text_pair"]) if "text_pair" in r else r["text"] for r in rows]
            return inputs, [r.get("label") for r in rows], [r.get("prediction") for r in rows]
    raise TunelabError(f"{run_dir} has no predictions to check an export against")


def export_onnx(run_dir: str | Path, quantize: str | None = None) -> dict:
    """Export the transformer part of a finished run's predictor to ``RUN/onnx`` (any task
    whose registry entry gives an export graph: fine-tuned text and image classifiers,
    bi-encoders, probes, CLIP and SigLIP image towers); returns the record written to
    ``RUN/onnx/export.json``. Longer than most because it is one transaction: the lock,
    the staging folder, the export and every check share one try/finally, so a failure
    anywhere leaves the old export as it was."""
    import torch

    run_dir = Path(run_dir)
    task = get_task(run_command(run_dir))
    if task.export_graph is None or task.predictor_from_graph is None:
        exportable = ", ".join(name for name, t in all_exportable().items())
        raise TunelabError(f"{run_dir} is a {task.name} run; ONNX export covers runs whose predictor is a "
                           f"transformer ({exportable})")
    if quantize not in (None, "int8"):
        raise TunelabError(f"--quantize {quantize}: the supported quantisation is int8")
    _require("onnx")
    ort = _require("onnxruntime")
    config = config_from_run(task.config_class, run_dir)
    graph = task.export_graph(run_dir, config)
    images = graph.inputs == "images"
    raw_inputs, gold, run_predictions = check_texts_of(
        run_dir, image_root=Path(config.data.dataset).expanduser() if images else None)
    inputs = as_text_inputs(raw_inputs)
    if images:
        sample = {"pixel_values": next(pixel_batches(graph.processor, inputs.texts[:2]))[1].numpy()}
    else:
        sample = _encode(graph.tokenizer, inputs, graph.max_length, slice(0, 2))
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
        axes = {name: {0: "batch"} if images else {0: "batch", 1: "sequence"} for name in names}
        axes[graph.output] = {0: "batch"}
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python control flow: checked below instead
            torch.onnx.export(graph.module, (), str(path), kwargs={k: torch.from_numpy(v) for k, v in sample.items()},
                              input_names=names, output_names=[graph.output], dynamic_axes=axes,
                              opset_version=OPSET, dynamo=False)
        (graph.processor if images else graph.tokenizer).save_pretrained(str(staging))

        def served_by(encode):
            """The run's predictions on the check inputs through ``encode``, and every
            array the graph gave on the way."""
            seen = []

            def recording(batch_inputs):
                seen.append(encode(batch_inputs))
                return seen[-1]

            predictions = task.predictor_from_graph(run_dir, config, recording)(inputs)
            return predictions, np.concatenate([a.reshape(len(a), -1) for a in seen])

        reference, reference_outputs = served_by(lambda x: torch_outputs(graph, x))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        exported, exported_outputs = served_by(lambda x: onnx_outputs(session, graph, x))
        # Logits are checked absolutely; pooled hidden states (features, embeddings) can be
        # large, so relative to their largest value.
        scale = 1.0 if graph.output == "logits" else max(1.0, float(np.abs(reference_outputs).max()))
        difference = float(np.abs(reference_outputs - exported_outputs).max())
        if difference > TOLERANCE * scale:
            raise TunelabError(f"the exported model's {graph.output} differ from PyTorch's by {difference:.2e} "
                               f"(more than {TOLERANCE * scale:.2g}); nothing was exported")
        record = {"format": "onnx", "version": 2, "task": task.name, "output": graph.output, "opset": OPSET,
                  "input_kind": graph.inputs,
                  "inputs": names, "checked_examples": len(inputs), "max_abs_output_difference": difference,
                  "tolerance": TOLERANCE * scale, "prediction_agreement": _agreement(reference, exported),
                  "problem": get_problem(config.data.problem).name, "max_length": graph.max_length,
                  # The run may have computed in bf16; the export is fp32, as plain transformers is.
                  "run_precision": config.runtime.precision,
                  "agreement_with_run_predictions": _agreement_with_file(exported, run_predictions)}
        if graph.output == "logits":
            record["max_abs_logit_difference"] = difference  # the name version 1 used
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
            int8_session = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
            int8, int8_outputs = served_by(lambda x: onnx_outputs(int8_session, graph, x))
            record["int8"] = _int8_change(reference, int8, gold, float(np.abs(reference_outputs - int8_outputs).max()))
        record["files"] = {f.name: file_sha256(f) for f in (path, staging / "model.int8.onnx") if f.is_file()}
        atomic_write_bytes(staging / "export.json", (json.dumps(record, indent=2) + "\n").encode())
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if lock is not None:
            lock.close()
    logger.info("exported %s (largest %s difference to PyTorch %.2e)", run_dir / ONNX_DIR, graph.output, difference)
    return record


def all_exportable() -> dict:
    return {name: task for name, task in all_tasks().items()
            if task.export_graph is not None and task.predictor_from_graph is not None}


def _agreement(first: list, second: list) -> float:
    """The share of inputs whose served label is the same (values: the same to 4 digits)."""
    same = [a.label == b.label if a.score_kind != "value" else abs(a.score - b.score) <= 1e-4 * max(1, abs(a.score))
            for a, b in zip(first, second)]
    return float(np.mean(same)) if same else 1.0


def _agreement_with_file(served: list, labels: list[str]) -> float | None:
    """The share of the run's own predicted labels the export gives again (values: within
    1e-3 of the printed value)."""
    if not served or any(label is None for label in labels):
        return None
    if served[0].score_kind == "value":
        same = [abs(p.score - float(label)) <= 1e-3 * max(1.0, abs(p.score)) for p, label in zip(served, labels)]
    else:
        same = [p.label == label for p, label in zip(served, labels)]
    return float(np.mean(same))


def _int8_change(reference: list, int8: list, gold: list[str] | None, output_difference: float) -> dict:
    """How much int8 changes the predictions: agreement with fp32, and accuracy on the
    run's labelled examples where it has them (classes, not values)."""
    change = {"agreement_with_fp32": _agreement(reference, int8), "max_abs_output_difference": output_difference}
    classes = reference and reference[0].score_kind != "value"
    if classes and gold and all(g is not None for g in gold):
        fp32 = float(np.mean([p.label == g for p, g in zip(reference, gold)]))
        quantized = float(np.mean([p.label == g for p, g in zip(int8, gold)]))
        change.update(accuracy_fp32=fp32, accuracy_int8=quantized, accuracy_change=quantized - fp32)
    return change


def _encode(tokenizer, inputs, max_length: int, rows=None) -> dict[str, np.ndarray]:
    ids, types = tokenize_inputs(tokenizer, inputs, max_length)
    if rows is not None:
        ids, types = ids[rows], (types[rows] if types else None)
    tensors = pad_batch(ids, pad_token_id(tokenizer), types)
    names = ("input_ids", "attention_mask", "token_type_ids")
    return {name: tensor.numpy() for name, tensor in zip(names, tensors)}


def torch_outputs(graph, inputs, batch_size: int = 32) -> np.ndarray:
    """The graph's output in PyTorch fp32 on the CPU, as the export is checked."""
    import torch

    if graph.inputs == "images":
        with torch.inference_mode():
            return image_outputs(graph.processor, inputs, lambda pixels: graph.module(pixels).float().numpy(),
                                 batch_size)
    return graph_outputs(graph.module, graph.tokenizer, inputs, graph.max_length, batch_size, "cpu")


def onnx_outputs(session, graph, inputs, batch_size: int = 32) -> np.ndarray:
    """The exported graph's output from an ONNX Runtime session: texts over
    length-sorted, dynamically padded batches; image files (``inputs``: their paths)
    through the saved image processor. ``graph``: anything with the ExportGraph's
    tokenizer, max_length and processor."""
    wanted = {i.name for i in session.get_inputs()}
    output = session.get_outputs()[0].name
    if graph.processor is not None:
        return image_outputs(graph.processor, inputs,
                             lambda pixels: session.run([output], {"pixel_values": pixels.numpy()})[0], batch_size)
    ids, types = tokenize_inputs(graph.tokenizer, inputs, graph.max_length)
    out = None
    for batch, tensors in sorted_padded_batches(ids, batch_size, pad_token_id(graph.tokenizer), "cpu", types):
        feed = {name: tensor.numpy() for name, tensor in tensors.items() if name in wanted}
        values = session.run([output], feed)[0]
        out = np.empty((len(ids), *values.shape[1:]), dtype=np.float32) if out is None else out
        out[batch] = values
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnx_session(ort, file: Path):
    """An ONNX Runtime session on the CPU; a file it refuses (damaged, external data it
    will not read, an unsupported operator) stops in one line naming it."""
    try:
        return ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own exception types
        first = " ".join(str(exc).split())[:200]
        raise TunelabError(f"ONNX Runtime cannot load {file} ({type(exc).__name__}: {first}); export the run "
                           "again") from None


def onnx_predictor(run_dir: str | Path, int8: bool = False):
    """``predict`` through ONNX Runtime: the exported graph, then the task's own predictor
    around it (a classifier, a head); no PyTorch model is loaded."""
    from transformers import AutoTokenizer

    ort = _require("onnxruntime")
    run_dir = Path(run_dir)
    task = get_task(run_command(run_dir))
    folder = run_dir / ONNX_DIR
    file = folder / ("model.int8.onnx" if int8 else "model.onnx")
    if task.predictor_from_graph is None:
        raise TunelabError(f"--backend onnx serves exported runs of {', '.join(all_exportable())}; {run_dir} is a "
                           f"{task.name} run")
    if not file.is_file():
        hint = " --quantize int8" if int8 else ""
        raise TunelabError(f"{file} does not exist; create it with: tunelab export {run_dir} --format onnx{hint}")
    record = read_json_file(folder / "export.json")
    recorded = (record.get("files") or {}).get(file.name)
    if recorded is not None and file_sha256(file) != recorded:
        raise TunelabError(f"{file} is not the file tunelab exported for this run (its content changed since "
                           f"export.json recorded it); export again: tunelab export {run_dir} --format onnx"
                           + (" --quantize int8" if int8 else ""))
    session = onnx_session(ort, file)
    if record.get("input_kind") == "images":
        from transformers import AutoImageProcessor

        graph = SimpleNamespace(tokenizer=None, max_length=None, processor=load_pretrained(
            AutoImageProcessor, folder, f"the image processor in {folder}"))
    else:
        graph = SimpleNamespace(tokenizer=load_pretrained(AutoTokenizer, folder, f"the tokenizer in {folder}"),
                                max_length=record["max_length"], processor=None)
    config = config_from_run(task.config_class, run_dir)

    def encode(inputs) -> np.ndarray:
        start = time.perf_counter()
        outputs = onnx_outputs(session, graph, inputs)
        logger.debug("onnx: %d inputs in %.3f s", len(outputs), time.perf_counter() - start)
        return outputs

    return task.predictor_from_graph(run_dir, config, encode)
