"""Text feature extraction: the reference approach against tunelab, in one process.

Reference (the lab's code): transformers ``pipeline("feature-extraction")`` called
on batches of 16 texts, keeping the [CLS] vector of each. tunelab: one
tokenisation pass, length-sorted batches, dynamic padding, inference mode, in
fp32 and in bf16. Same model, same sentences, [CLS] pooling for both.

    python benchmarks/text_features.py [--model minilm] [--data-dir DIR] [--quick]

Ends with one JSON line: reference_per_s, tunelab_fp32_per_s, tunelab_bf16_per_s,
ratio_fp32 and ratio_bf16 (each tunelab figure over the fp32 reference).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def reference_features(model_location: str, texts: list[str], chunk: int = 16) -> np.ndarray:
    from transformers import pipeline

    extractor = pipeline("feature-extraction", model=model_location, tokenizer=model_location,
                         framework="pt", device="cpu") if _takes_framework() else \
        pipeline("feature-extraction", model=model_location, tokenizer=model_location, device="cpu")
    vectors = []
    for start in range(0, len(texts), chunk):
        for output in extractor(texts[start:start + chunk]):
            vectors.append(np.asarray(output[0][0], dtype=np.float32))  # [CLS] of each text
    return np.stack(vectors)


def _takes_framework() -> bool:
    import transformers

    return int(transformers.__version__.split(".")[0]) < 5


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="hub id, local directory or alias (default minilm)")
    parser.add_argument("--data-dir", default=os.environ.get("TUNELAB_DATA_DIR", "../shared/data"))
    parser.add_argument("--num-texts", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64, help="tunelab batch size")
    parser.add_argument("--quick", action="store_true", help="256 texts: a CI-sized run")
    args = parser.parse_args(argv)
    os.environ["TUNELAB_DATA_DIR"] = args.data_dir
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    n = 256 if args.quick else args.num_texts

    import torch
    import transformers

    from tunelab.core.config import DataConfig, RuntimeConfig
    from tunelab.data.text import load_text_dataset
    from tunelab.encoders.text import FeatureConfig, TextFeatureExtractor
    from tunelab.models.resolve import resolve_model

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    dataset = load_text_dataset(DataConfig(dataset="rotten_tomatoes"))
    texts = dataset.splits["train"].texts[:n]
    source = resolve_model(args.model)
    print(f"{n} Rotten Tomatoes sentences, model {args.model}, torch threads {torch.get_num_threads()}")

    def timed(fn):
        fn(texts[:32])  # warm-up: weights in cache, kernels chosen
        start = time.perf_counter()
        out = fn(texts)
        return out, n / (time.perf_counter() - start)

    reference, reference_rate = timed(lambda t: reference_features(source.location, t))
    rates, outputs = {}, {}
    for precision in ("fp32", "bf16"):
        extractor = TextFeatureExtractor(source, FeatureConfig(pooling="cls", batch_size=args.batch_size),
                                         RuntimeConfig(device="cpu", precision=precision))
        outputs[precision], rates[precision] = timed(lambda t, e=extractor: e.encode(t))
    same = np.abs(outputs["fp32"] - reference).max()

    print("\n| extractor | sentences/s | ratio |\n|---|---|---|")
    print(f"| reference pipeline, chunks of 16, fp32 | {reference_rate:.1f} | 1.00 |")
    for precision in ("fp32", "bf16"):
        print(f"| tunelab, batch {args.batch_size}, {precision} | {rates[precision]:.1f} | "
              f"{rates[precision] / reference_rate:.2f} |")
    print(f"\nlargest |difference| of tunelab fp32 vs reference [CLS] vectors: {same:.2e}")
    print(json.dumps({
        "benchmark": "text_features", "model": args.model, "texts": n,
        "reference_per_s": round(reference_rate, 1),
        "tunelab_fp32_per_s": round(rates["fp32"], 1),
        "tunelab_bf16_per_s": round(rates["bf16"], 1),
        "ratio_fp32": round(rates["fp32"] / reference_rate, 2),
        "ratio_bf16": round(rates["bf16"] / reference_rate, 2),
        "max_abs_diff_fp32": float(same),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
