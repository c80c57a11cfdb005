"""Text fine-tuning throughput: the reference recipe, a plain Trainer, and tunelab.

Same model, same training sentences, same number of optimiser steps, one process:

  (a) reference: tokenise with padding to max_length 512, Hugging Face Trainer
  (b) Trainer with DataCollatorWithPadding (dynamic padding, random batches)
  (c) tunelab: dynamic padding with seeded length-grouped batches

    python benchmarks/text_finetune.py [--model minilm] [--data-dir DIR] [--quick]

Padding to 512 makes every step of (a) cost the same whatever its sentences, so (a)
is timed over its first --reference-steps steps (default 8) to keep the run under
10 minutes on 2 CPU cores; (b) and (c) run every step.

Prints training samples/s of each and ends with one JSON line holding
ratio_vs_reference (c/a) and ratio_vs_trainer (c/b).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def trainer_samples_per_s(model_location, tokenizer, train_ds, collator, batch_size, steps, seed, out):
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    model = AutoModelForSequenceClassification.from_pretrained(model_location, num_labels=2)
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch_size, max_steps=steps,
                             learning_rate=2e-5, weight_decay=0.01, report_to="none", save_strategy="no",
                             eval_strategy="no", logging_steps=10_000, seed=seed, use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=collator,
                      processing_class=tokenizer)
    return _timed_train(trainer, batch_size, steps)


def _timed_train(trainer, batch_size, steps):
    start = time.perf_counter()
    trainer.train()
    return batch_size * steps / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data-dir", default=os.environ.get("TUNELAB_DATA_DIR", "../shared/data"))
    parser.add_argument("--num-texts", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--reference-steps", type=int, default=8,
                        help="steps timed for (a), whose cost per step is constant")
    parser.add_argument("--quick", action="store_true", help="256 texts: a CI-sized run")
    args = parser.parse_args(argv)
    os.environ["TUNELAB_DATA_DIR"] = args.data_dir
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    n = 256 if args.quick else args.num_texts

    import torch
    import transformers
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, default_data_collator

    from tunelab.core.config import DataConfig, RuntimeConfig
    from tunelab.data.text import load_text_dataset
    from tunelab.models.resolve import load_tokenizer, resolve_model
    from tunelab.tasks.finetune import FinetuneConfig
    from tunelab.training.config import TrainConfig
    from tunelab.training.text import build_model, build_trainer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    source = resolve_model(args.model)
    data_config = DataConfig(dataset="rotten_tomatoes", max_train_samples=n, max_eval_samples=32)
    dataset = load_text_dataset(data_config, seed=0)
    train = dataset.splits["train"]
    tokenizer = load_tokenizer(source)
    steps = n // args.batch_size
    reference_steps = min(steps, 2 if args.quick else args.reference_steps)
    print(f"{n} Rotten Tomatoes sentences, model {args.model}, batch {args.batch_size}, {steps} steps "
          f"({reference_steps} for the padded reference)")

    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        padded = tokenizer(train.texts, padding="max_length", truncation=True, max_length=512)
        reference_ds = Dataset.from_dict({"input_ids": padded["input_ids"],
                                          "attention_mask": padded["attention_mask"],
                                          "labels": train.labels.tolist()})
        rates["reference"] = trainer_samples_per_s(source.location, tokenizer, reference_ds, default_data_collator,
                                                   args.batch_size, reference_steps, 0, str(Path(tmp) / "a"))
        dynamic = tokenizer(train.texts, truncation=True, max_length=512)
        dynamic_ds = Dataset.from_dict({"input_ids": dynamic["input_ids"],
                                        "attention_mask": dynamic["attention_mask"],
                                        "labels": train.labels.tolist()})
        rates["trainer"] = trainer_samples_per_s(source.location, tokenizer, dynamic_ds,
                                                 DataCollatorWithPadding(tokenizer), args.batch_size, steps, 0,
                                                 str(Path(tmp) / "b"))
        for key, precision in (("tunelab", "fp32"), ("tunelab_bf16", "bf16")):
            config = FinetuneConfig(model=args.model, data=data_config,
                                    runtime=RuntimeConfig(device="cpu", precision=precision),
                                    train=TrainConfig(batch_size=args.batch_size, max_steps=steps,
                                                      logging_steps=10_000))
            torch.manual_seed(0)
            model = build_model(source, dataset, config)
            trainer, _ = build_trainer(config, dataset, tokenizer, model, Path(tmp) / key, evaluate=False)
            trainer.args.disable_tqdm = True
            rates[key] = _timed_train(trainer, args.batch_size, steps)

    print("\n| recipe | train samples/s | tunelab ratio |\n|---|---|---|")
    for key, label in (("reference", "(a) reference: pad to 512, Trainer"),
                       ("trainer", "(b) Trainer + DataCollatorWithPadding")):
        print(f"| {label} | {rates[key]:.1f} | {rates['tunelab'] / rates[key]:.2f} |")
    print(f"| (c) tunelab fp32 | {rates['tunelab']:.1f} | 1.00 |")
    print(f"| (d) tunelab bf16 | {rates['tunelab_bf16']:.1f} | {rates['tunelab_bf16'] / rates['tunelab']:.2f} "
          "vs (c) |")
    print(json.dumps({
        "benchmark": "text_finetune", "model": args.model, "texts": n, "steps": steps,
        "reference_steps": reference_steps,
        "reference_per_s": round(rates["reference"], 1), "trainer_per_s": round(rates["trainer"], 1),
        "tunelab_per_s": round(rates["tunelab"], 1),
        "ratio_vs_reference": round(rates["tunelab"] / rates["reference"], 2),
        "ratio_vs_trainer": round(rates["tunelab"] / rates["trainer"], 2),
        "tunelab_bf16_per_s": round(rates["tunelab_bf16"], 1),
        "ratio_bf16_vs_fp32": round(rates["tunelab_bf16"] / rates["tunelab"], 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
