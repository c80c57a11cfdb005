"""CLIP LoRA fine-tuning: throughput, and memory that stays flat as the data grows.

The same fixed number of LoRA training steps over 1,000 and over 10,000 Tiny
ImageNet training images, each in a fresh process (peak resident memory is per
process). Images are decoded lazily, so the 10k peak should match the 1k peak.
A small CLIP architecture with random weights keeps this quick on a CPU; pass
--arch vit-b16 for the real size (on a GPU).

    python benchmarks/clip_finetune.py [--steps 30] [--data-dir DIR] [--quick]

Ends with one JSON line: peak_rss_mb_1k, peak_rss_mb_10k, rss_ratio and
train_images_per_s (over the 10k run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

SMALL_ARCH = dict(
    text_config=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                     max_position_embeddings=77),
    vision_config=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                       image_size=64, patch_size=8),
    projection_dim=256,
)


def build_model(folder: Path, arch: str) -> None:
    import torch
    from transformers import CLIPConfig, CLIPModel

    from tunelab.models.architectures import arch_config, char_clip_tokenizer, clip_image_processor

    tokenizer = char_clip_tokenizer()
    if arch == "vit-b16":
        config, size = arch_config("openai/clip-vit-base-patch16"), 224
    else:
        small = json.loads(json.dumps(SMALL_ARCH))
        small["text_config"].update(vocab_size=len(tokenizer), bos_token_id=len(tokenizer) - 2,
                                    eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1)
        config, size = CLIPConfig(**small), 64
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    clip_image_processor(size).save_pretrained(folder)


def child(args) -> int:
    """One training run in this process; prints its figures as JSON."""
    import logging

    import tunelab
    from tunelab.core.config import DataConfig, ImageLoadingConfig, RuntimeConfig
    from tunelab.tasks.clip_finetune import ClipFinetuneConfig
    from tunelab.training.config import TrainConfig

    logging.disable(logging.WARNING)
    config = ClipFinetuneConfig(
        model=args.model_dir,
        data=DataConfig(dataset="tiny_imagenet", max_train_samples=args.child, max_eval_samples=64,
                        splits=["validation"]),
        train=TrainConfig(method="lora", max_steps=args.steps, batch_size=args.batch_size, eval_every=args.steps,
                          eval_batch_size=64, logging_steps=10_000),
        images=ImageLoadingConfig(num_workers=args.num_workers),
        runtime=RuntimeConfig(device=args.device, precision=args.precision),
    )
    with tempfile.TemporaryDirectory() as out:
        result = tunelab.clip_finetune(config, out=Path(out) / "run")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images": args.child, "peak_rss_mb": peak_mb,
                      "train_images_per_s": result.metrics["timing"]["throughput"]["train_samples_per_s"]}))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("TUNELAB_DATA_DIR", "../shared/data"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--arch", choices=["small", "vit-b16"], default="small")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="5 steps: a CI-sized run")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ["TUNELAB_DATA_DIR"] = args.data_dir
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        return child(args)
    steps = 5 if args.quick else args.steps
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "clip"
        build_model(model_dir, args.arch)
        for size in (1000, 10000):
            cmd = [sys.executable, __file__, "--child", str(size), "--model-dir", str(model_dir),
                   "--steps", str(steps), "--batch-size", str(args.batch_size), "--device", args.device,
                   "--precision", args.precision, "--data-dir", args.data_dir]
            if args.num_workers is not None:
                cmd += ["--num-workers", str(args.num_workers)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            results[size] = json.loads(done.stdout.strip().splitlines()[-1])
    one, ten = results[1000], results[10000]
    print(f"{steps} LoRA steps of batch {args.batch_size}, {args.arch} CLIP (random weights), one process each")
    print("\n| training images | peak RSS (MB) | train images/s |\n|---|---|---|")
    for size, r in results.items():
        print(f"| {size:,} | {r['peak_rss_mb']:.0f} | {r['train_images_per_s']:.1f} |")
    ratio = ten["peak_rss_mb"] / one["peak_rss_mb"]
    print(f"\n10k peak / 1k peak: {ratio:.3f} (target: within 1.15)")
    print(json.dumps({"benchmark": "clip_finetune", "arch": args.arch, "steps": steps,
                      "peak_rss_mb_1k": round(one["peak_rss_mb"], 1), "peak_rss_mb_10k": round(ten["peak_rss_mb"], 1),
                      "rss_ratio": round(ratio, 3), "train_images_per_s": round(ten["train_images_per_s"], 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
