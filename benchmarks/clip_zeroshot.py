"""CLIP zero-shot throughput: the reference loop against tunelab, in one process.

ViT-B/16 architecture with random weights (tunelab ships its config: no network),
the same Tiny ImageNet validation images, 200 class prompts encoded once for both.

  reference: the processor and the model called one image at a time, fp32
  tunelab:   images decoded in DataLoader workers (GPU) or in line (CPU), batched, scored
             against cached class embeddings with streaming top-5; on CPUs through the
             rearranged image tower of tunelab.encoders.cpu_tower; fp32, and bf16 on CPU / fp16 on GPU

    python benchmarks/clip_zeroshot.py [--num-images 512] [--data-dir DIR] [--quick]

Ends with one JSON line: reference_per_s, tunelab_fp32_per_s, tunelab_per_s (reduced
precision), ratio_fp32 and ratio (reduced precision over the fp32 reference).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="openai/clip-vit-base-patch16",
                        help="a shipped architecture (random weights) or a local CLIP directory")
    parser.add_argument("--data-dir", default=os.environ.get("TUNELAB_DATA_DIR", "../shared/data"))
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=None, help="tunelab batch (default: the image batch of runs)")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="32 images: a CI-sized run")
    args = parser.parse_args(argv)
    os.environ["TUNELAB_DATA_DIR"] = args.data_dir
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import numpy as np
    import torch
    import transformers
    from transformers import CLIPModel

    from tunelab.core.config import DataConfig, ImageLoadingConfig
    from tunelab.core.runtime import resolve_device
    from tunelab.data.image_pipeline import ClipPreprocess, image_loader
    from tunelab.data.images import load_image_dataset
    from tunelab.encoders.clip import class_embeddings, image_embeddings, logit_scale, score_loader
    from tunelab.models.architectures import arch_config, char_clip_tokenizer, clip_image_processor
    from tunelab.problems.scores import ScoreAccumulator

    transformers.logging.set_verbosity_error()
    device = resolve_device(args.device)
    n = 32 if args.quick else args.num_images
    dataset = load_image_dataset(DataConfig(dataset="tiny_imagenet", splits=["validation"]))
    split = dataset.splits["validation"].subset(np.arange(n))
    if Path(args.model).is_dir():
        from tunelab.encoders.clip import load_clip
        from tunelab.models.resolve import resolve_model

        model, tokenizer, processor = load_clip(resolve_model(args.model))
    else:
        torch.manual_seed(0)
        model, tokenizer, processor = CLIPModel(arch_config(args.model)), char_clip_tokenizer(), clip_image_processor()
    model.to(device).eval()
    class_emb = class_embeddings(model, tokenizer, dataset.class_names, ["a photo of a {}"], device)
    scale = logit_scale(model)
    batch = args.batch_size or ImageLoadingConfig().batch_for(device)
    print(f"{n} Tiny ImageNet validation images, {len(dataset.class_names)} classes, {args.model} "
          f"(random weights), device {device}, torch threads {torch.get_num_threads()}")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def reference(count):
        best = []
        with torch.no_grad():
            for row in range(count):
                inputs = processor(images=split.load(row), return_tensors="pt").to(device)
                emb = image_embeddings(model, inputs["pixel_values"])
                best.append(float((scale * emb @ class_emb.T).max()))
        sync()
        return best

    low = torch.float16 if device.type == "cuda" else torch.bfloat16
    # A run loads the model in its precision once, so the cast is not timed.
    nets = {torch.float32: model, low: copy.deepcopy(model).to(dtype=low)}

    def tunelab(count, dtype):
        accumulator = ScoreAccumulator(count, len(dataset.class_names), "similarity")
        loader = image_loader(split.subset(np.arange(count)), ClipPreprocess.for_device(processor, device), batch,
                              args.num_workers)
        score_loader(nets[dtype], loader, class_emb, device, accumulator, dtype=dtype, desc="tunelab")
        sync()
        return accumulator.result().score.tolist()

    def rate(fn, *a):
        fn(min(8, n), *a)  # warm-up
        start = time.perf_counter()
        out = fn(n, *a)
        return out, n / (time.perf_counter() - start)

    ref_pred, ref_rate = rate(reference)
    fp32_pred, fp32_rate = rate(tunelab, torch.float32)
    _, low_rate = rate(tunelab, low)
    # Random weights make class scores near-ties, so compare scores, not argmaxes.
    difference = float(np.max(np.abs(np.array(ref_pred) - np.array(fp32_pred))))
    low_name = "fp16" if low == torch.float16 else "bf16"
    print("\n| scorer | images/s | ratio |\n|---|---|---|")
    print(f"| reference: one image at a time, fp32 | {ref_rate:.1f} | 1.00 |")
    from tunelab.data.image_pipeline import default_workers

    workers = default_workers() if args.num_workers is None else args.num_workers
    print(f"| tunelab: batch {batch}, {workers} decode workers, fp32 | {fp32_rate:.1f} | {fp32_rate / ref_rate:.2f} |")
    print(f"| tunelab: batch {batch}, {workers} decode workers, {low_name} | {low_rate:.1f} | "
          f"{low_rate / ref_rate:.2f} |")
    print(f"\nlargest |difference| of the best class score, tunelab fp32 vs reference: {difference:.2e}")
    print(json.dumps({"benchmark": "clip_zeroshot", "model": args.model, "device": str(device), "images": n,
                      "reference_per_s": round(ref_rate, 1), "tunelab_fp32_per_s": round(fp32_rate, 1),
                      "tunelab_per_s": round(low_rate, 1), "precision": low_name,
                      "ratio_fp32": round(fp32_rate / ref_rate, 2), "ratio": round(low_rate / ref_rate, 2),
                      "max_score_difference_fp32": difference}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
