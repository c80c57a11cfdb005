"""Serving speed: ``tunelab predict`` over the Rotten Tomatoes test sentences with one
fine-tuned MiniLM run, through PyTorch fp32 (the baseline), PyTorch bf16, ONNX
Runtime fp32 and ONNX Runtime int8, in one process, on the same texts.

    python benchmarks/predict.py [--model minilm] [--data-dir DIR] [--run RUN] [--quick]

Without ``--run`` it first fine-tunes a short run (speed does not depend on how well
it learned) and exports it. Ends with one JSON line holding texts/s of each backend
and ``ratio_onnx_fp32``, ``ratio_onnx_int8`` (each against PyTorch fp32), plus the
int8 model's accuracy change that the export measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="hub id, local directory or alias (default minilm)")
    parser.add_argument("--data-dir", default=os.environ.get("TUNELAB_DATA_DIR", "../shared/data"))
    parser.add_argument("--run", help="an existing fine-tuning run directory to serve")
    parser.add_argument("--quick", action="store_true", help="128 texts and a 10-step run: a CI-sized run")
    args = parser.parse_args(argv)
    os.environ["TUNELAB_DATA_DIR"] = args.data_dir
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    import tunelab
    from tunelab.core.config import DataConfig
    from tunelab.data.text import load_text_dataset
    from tunelab.serve.export import export_onnx
    from tunelab.serve.predict import load_predictor

    torch.manual_seed(0)
    texts = load_text_dataset(DataConfig(dataset="rotten_tomatoes")).splits["test"].texts
    texts = texts[:128] if args.quick else texts
    workdir = tempfile.mkdtemp(prefix="tunelab-predict-bench-")
    run = Path(args.run) if args.run else None
    if run is None:
        run = Path(workdir) / "run"
        config = tunelab.FinetuneConfig(
            model=args.model, data=DataConfig(dataset="rotten_tomatoes", max_train_samples=320 if args.quick else 2000,
                                              max_eval_samples=128 if args.quick else None),
            train=tunelab.TrainConfig(max_steps=10 if args.quick else 60, eval_every=10 if args.quick else 60,
                                      batch_size=32, lr=5e-5))
        tunelab.finetune(config, out=run)
    record = export_onnx(run, quantize="int8")

    rates = {}
    for name, backend, precision in (("pytorch_fp32", "torch", "fp32"), ("pytorch_bf16", "torch", "bf16"),
                                     ("onnx_fp32", "onnx", None), ("onnx_int8", "onnx-int8", None)):
        predictor = load_predictor(run, backend, precision or "fp32")
        predictor(texts[:16])  # warm up: first calls allocate and compile kernels
        start = time.perf_counter()
        predictor(texts)
        rates[name] = len(texts) / (time.perf_counter() - start)

    print(f"{len(texts)} Rotten Tomatoes test sentences, {torch.get_num_threads()} threads")
    print("| backend | texts/s | vs PyTorch fp32 |")
    print("|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / rates['pytorch_fp32']:.2f} |")
    result = {"benchmark": "predict", "model": args.model, "texts": len(texts),
              **{f"{name}_per_s": round(rate, 1) for name, rate in rates.items()},
              "ratio_pytorch_bf16": round(rates["pytorch_bf16"] / rates["pytorch_fp32"], 2),
              "ratio_onnx_fp32": round(rates["onnx_fp32"] / rates["pytorch_fp32"], 2),
              "ratio_onnx_int8": round(rates["onnx_int8"] / rates["pytorch_fp32"], 2),
              "int8_accuracy_change": record["int8"].get("accuracy_change")}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
