"""LoRA fine-tuning of a Qwen2.5-0.5B-size decoder as a classifier: tunelab against a
plain Trainer with peft, in the same process, on Rotten Tomatoes lengths.

    python benchmarks/decoder_lora.py [--data-dir DIR] [--quick]

The model is Qwen2.5-0.5B's architecture (tunelab's shipped config) with random
weights, as a 2-label sequence classifier; LoRA r 8 on q_proj and v_proj (540,672
adapter parameters plus the 1,792 of the head). Texts are Rotten Tomatoes sentences
tokenised with all-MiniLM-L6-v2's BERT vocabulary (the Qwen tokenizer needs the hub),
so batches have the data's real lengths.

  (a) Trainer + peft + DataCollatorWithPadding (random batches), bf16 on a GPU
  (b) tunelab finetune --method lora: length-grouped batches, bf16 on a GPU
  (c) tunelab with --load-in-4bit (QLoRA; CUDA and bitsandbytes only)

Prints samples/s and peak GPU memory of each and ends with one JSON line holding
ratio_vs_trainer (b/a). ``--quick`` shrinks the model to 2 layers (a CPU-sized check
that the script runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _peak_reset():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb():
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _timed(trainer, samples):
    _peak_reset()
    start = time.perf_counter()
    trainer.train()
    return samples / (time.perf_counter() - start), _peak_mb()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("TUNELAB_DATA_DIR", "../shared/data"))
    parser.add_argument("--num-texts", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="a 2-layer model and 128 texts: a CPU-sized check")
    args = parser.parse_args(argv)
    os.environ["TUNELAB_DATA_DIR"] = args.data_dir
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import importlib.util

    import torch
    import transformers
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from tunelab.core.config import DataConfig, RuntimeConfig
    from tunelab.data.text import load_text_dataset
    from tunelab.models.architectures import arch_config
    from tunelab.models.resolve import load_tokenizer, resolve_model
    from tunelab.tasks.finetune import FinetuneConfig
    from tunelab.training.config import LoraConfig as TunelabLora
    from tunelab.training.config import TrainConfig
    from tunelab.training.text import build_model, build_trainer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    gpu = torch.cuda.is_available()
    precision = "bf16" if gpu else "fp32"
    n = 128 if args.quick else args.num_texts
    batch = 8 if args.quick else args.batch_size
    steps = n // batch
    data_config = DataConfig(dataset="rotten_tomatoes", max_train_samples=n, max_eval_samples=32)
    dataset = load_text_dataset(data_config, seed=0)
    tokenizer = load_tokenizer(resolve_model("minilm"))
    config = arch_config("Qwen/Qwen2.5-0.5B")
    config.num_labels = 2
    config.pad_token_id = tokenizer.pad_token_id
    if args.quick:
        config.num_hidden_layers, config.hidden_size, config.intermediate_size = 2, 64, 128
        config.num_attention_heads, config.num_key_value_heads = 2, 1
        config.layer_types = config.layer_types[:2] if getattr(config, "layer_types", None) else None
    rates, memory = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "qwen"
        torch.manual_seed(0)
        AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        print(f"{n} Rotten Tomatoes sentences, Qwen2.5-0.5B architecture ({config.num_hidden_layers} layers), "
              f"batch {batch}, {steps} steps, {precision}")

        train = dataset.splits["train"]
        encoded = tokenizer(train.texts, truncation=True, max_length=512)
        plain_ds = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                                      "labels": train.labels.tolist()})
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1,
                                                 target_modules=["q_proj", "v_proj"], task_type=TaskType.SEQ_CLS))
        plain = Trainer(model=model, train_dataset=plain_ds, data_collator=DataCollatorWithPadding(tokenizer),
                        processing_class=tokenizer, args=TrainingArguments(
                            output_dir=str(Path(tmp) / "a"), per_device_train_batch_size=batch, max_steps=steps,
                            learning_rate=1e-3, report_to="none", save_strategy="no", eval_strategy="no",
                            logging_steps=10_000, seed=0, bf16=gpu, use_cpu=not gpu, disable_tqdm=True))
        rates["trainer"], memory["trainer"] = _timed(plain, batch * steps)
        del plain, model

        variants = [("tunelab", False)]
        if gpu and importlib.util.find_spec("bitsandbytes"):
            variants.append(("tunelab_4bit", True))
        for key, four_bit in variants:
            run_config = FinetuneConfig(model=str(folder), data=data_config, load_in_4bit=four_bit,
                                        runtime=RuntimeConfig(device="auto", precision=precision),
                                        lora=TunelabLora(targets=["q_proj", "v_proj"]),
                                        train=TrainConfig(method="lora", batch_size=batch, max_steps=steps,
                                                          logging_steps=10_000))
            torch.manual_seed(0)
            model = build_model(resolve_model(str(folder)), dataset, run_config)
            trainer, _ = build_trainer(run_config, dataset, tokenizer, model, Path(tmp) / key, evaluate=False)
            trainer.args.disable_tqdm = True
            rates[key], memory[key] = _timed(trainer, batch * steps)
            del trainer, model

    def mb(value):
        return "-" if value is None else f"{value:.0f}"

    print("\n| recipe | train samples/s | peak GPU MB | ratio vs (a) |\n|---|---|---|---|")
    labels = {"trainer": "(a) Trainer + peft, dynamic padding", "tunelab": f"(b) tunelab LoRA, {precision}",
              "tunelab_4bit": "(c) tunelab QLoRA, 4-bit base"}
    for key in rates:
        print(f"| {labels[key]} | {rates[key]:.1f} | {mb(memory[key])} | {rates[key] / rates['trainer']:.2f} |")
    print(json.dumps({"benchmark": "decoder_lora", "texts": n, "steps": steps, "batch": batch, "precision": precision,
                      "quick": args.quick, **{f"{k}_per_s": round(v, 1) for k, v in rates.items()},
                      **{f"{k}_peak_mb": (round(v) if v is not None else None) for k, v in memory.items()},
                      "ratio_vs_trainer": round(rates["tunelab"] / rates["trainer"], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
