"""The reference lab's exercises at full size on one GPU, tunelab against the reference
recipe in the same process: random-init real architectures (DistilBERT-base and CLIP
ViT-B/16 from tunelab's shipped configs), GPU utilisation sampled during each run.

    python benchmarks/gpu_lab.py [--data-dir DIR] [--tokenizer DIR] [--quick]

1. text fine-tuning, samples/s: the reference pads every sentence to 512 tokens and
   trains with the Trainer (fp16); tunelab: dynamic padding, length-grouped batches,
   bf16 (same batch size).
2. CLIP LoRA training, images/s: the reference runs the processor per example inside
   the dataset and trains with the Trainer and CLIP's in-batch contrastive loss (fp16,
   batch 16); tunelab: decoding in DataLoader workers, bf16, batch 64.
3. zero-shot over the Tiny ImageNet validation images (wall time with decoding):
   the reference scores one image at a time (timed on a sample); tunelab: the
   `zeroshot` command itself.

``--tokenizer`` is a BERT-uncased vocabulary folder (DistilBERT's own is on the hub;
all-MiniLM-L6-v2's is the same vocabulary). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path


class Utilisation:
    """Samples the GPU's utilisation every 0.1 s while a block runs (NVML)."""

    def __init__(self):
        self.samples: list[int] = []
        self._stop = threading.Event()
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.nvml = pynvml
        except Exception:  # no GPU, no NVML: no samples
            self.handle = None

    def __enter__(self):
        self.samples, self._stop = [], threading.Event()
        if self.handle is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu))
            time.sleep(0.1)

    def __exit__(self, *exc):
        self._stop.set()
        if self.handle is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return self.mean_between(float("-inf"), float("inf"))

    def mean_between(self, start: float, end: float) -> float | None:
        values = [u for t, u in self.samples if start <= t <= end]
        return sum(values) / len(values) if values else None


def step_timer(warmup: int):
    """A Trainer callback that times the steps after ``warmup``: steady-state throughput,
    leaving out one-time costs (CUDA context, kernel selection, first-use imports)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = {}

        def on_step_end(self, args, state, control, **kwargs):
            sync_cuda()
            self.times[state.global_step] = time.perf_counter()

        def rate(self, batch: int) -> tuple[float, float, float]:
            last = max(self.times)
            first = min(warmup, last - 1)
            seconds = self.times[last] - self.times[first]
            return batch * (last - first) / seconds, self.times[first], self.times[last]

    return StepTimer()


def sync_cuda():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def text_finetune(args, device, work: Path, gpu: Utilisation) -> dict:
    import torch
    from torch.utils.data import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DistilBertForSequenceClassification,
        Trainer,
        TrainingArguments,
    )

    from tunelab.core.config import DataConfig, RuntimeConfig
    from tunelab.data.text import load_text_dataset
    from tunelab.models.architectures import arch_config
    from tunelab.tasks.finetune import FinetuneConfig
    from tunelab.training.config import TrainConfig
    from tunelab.training.text import build_trainer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    config = arch_config("distilbert-base-uncased")
    config.num_labels = 2
    torch.manual_seed(0)
    folder = work / "distilbert"
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    n = 256 if args.quick else 4096
    dataset = load_text_dataset(DataConfig(dataset="rotten_tomatoes", max_train_samples=n))
    train = dataset.splits["train"]
    steps, warmup = (6, 2) if args.quick else (160, 20)
    batch = 16
    tunelab_batch = 16 if args.quick else 128  # tunelab's recipe: short padded batches let the GPU take more

    class Padded(Dataset):
        def __init__(self):
            self.enc = tokenizer(train.texts, padding="max_length", truncation=True, max_length=512)

        def __len__(self):
            return len(train)

        def __getitem__(self, i):
            return {"input_ids": self.enc["input_ids"][i], "attention_mask": self.enc["attention_mask"][i],
                    "labels": int(train.labels[i])}

    def timed(trainer, batch_size):
        timer = step_timer(warmup)
        trainer.add_callback(timer)
        trainer.train()
        rate, start, end = timer.rate(batch_size)
        return rate, gpu.mean_between(start, end)

    fp16 = device.type == "cuda"
    reference_model = AutoModelForSequenceClassification.from_pretrained(folder).to(device)
    ref_args = TrainingArguments(output_dir=str(work / "ref"), per_device_train_batch_size=batch, max_steps=steps,
                                 learning_rate=2e-5, report_to="none", save_strategy="no", eval_strategy="no",
                                 logging_steps=10_000, fp16=fp16, use_cpu=device.type == "cpu", disable_tqdm=True)

    def collate(items):
        return {k: torch.tensor([item[k] for item in items]) for k in items[0]}

    reference = Trainer(model=reference_model, args=ref_args, train_dataset=Padded(), data_collator=collate)
    with gpu:
        reference_rate, reference_util = timed(reference, batch)
    del reference, reference_model

    from tunelab.core.runtime import resolve_precision

    results = {"reference_samples_per_s": reference_rate, "reference_gpu_util": reference_util, "batch": batch}
    for key, size in (("same_batch", batch), ("tunelab_batch", tunelab_batch)):
        tl_config = FinetuneConfig(model=str(folder), data=DataConfig(dataset="rotten_tomatoes"),
                                   train=TrainConfig(max_steps=steps, batch_size=size, eval_every=10_000,
                                                     logging_steps=10_000),
                                   runtime=RuntimeConfig(precision=resolve_precision("auto", device)))
        model = AutoModelForSequenceClassification.from_pretrained(folder).to(device)
        trainer, _ = build_trainer(tl_config, dataset, tokenizer, model, work / f"tl-{key}", evaluate=False)
        with gpu:
            rate, util = timed(trainer, size)
        results.update({f"tunelab_{key}_samples_per_s": rate, f"tunelab_{key}_gpu_util": util,
                        f"ratio_{key}": rate / reference_rate, f"tunelab_{key}_size": size})
    results["tunelab_precision"] = tl_config.runtime.precision
    return results


def clip_lora(args, device, work: Path, gpu: Utilisation, clip_dir: Path) -> dict:
    import numpy as np
    import torch
    from torch.utils.data import Dataset
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, Trainer, TrainingArguments

    from tunelab.core.config import DataConfig, ImageDecodingConfig, RuntimeConfig
    from tunelab.core.runtime import resolve_precision
    from tunelab.data.images import load_image_dataset
    from tunelab.tasks.clip_finetune import ClipFinetuneConfig, build_clip_trainer, wrap_clip_lora
    from tunelab.training.config import LoraConfig, TrainConfig

    dataset = load_image_dataset(DataConfig(dataset="tiny_imagenet", splits=["validation"]), flat_split="all")
    data = dataset.splits["validation"]
    tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    processor = AutoImageProcessor.from_pretrained(clip_dir)
    steps, warmup = (5, 2) if args.quick else (80, 15)
    names = dataset.class_names

    class PerExample(Dataset):
        """The reference: the processor runs on every example in the dataset itself."""

        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            image = data.load(i)
            pixels = processor(images=image, return_tensors="pt")["pixel_values"][0]
            text = tokenizer(f"a photo of a {names[data.labels[i]]}", padding="max_length", max_length=77,
                             truncation=True, return_tensors="pt")
            return {"pixel_values": pixels, "input_ids": text["input_ids"][0],
                    "attention_mask": text["attention_mask"][0]}

    class ContrastiveTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs, return_loss=True)
            return (outputs.loss, outputs) if return_outputs else outputs.loss

    def lora_model():
        torch.manual_seed(0)
        return wrap_clip_lora(CLIPModel.from_pretrained(clip_dir), LoraConfig(r=8, alpha=32, dropout=0.1)).to(device)

    batch_ref = 16
    ref_args = TrainingArguments(output_dir=str(work / "clip-ref"), per_device_train_batch_size=batch_ref,
                                 max_steps=steps, learning_rate=2e-5, report_to="none", save_strategy="no",
                                 eval_strategy="no", logging_steps=10_000, fp16=device.type == "cuda",
                                 use_cpu=device.type == "cpu", disable_tqdm=True, remove_unused_columns=False)
    reference = ContrastiveTrainer(model=lora_model(), args=ref_args, train_dataset=PerExample())
    timer = step_timer(warmup)
    reference.add_callback(timer)
    with gpu:
        reference.train()
    reference_rate, start, end = timer.rate(batch_ref)
    reference_util = gpu.mean_between(start, end)
    del reference

    batch = 16 if args.quick else 128
    precision = resolve_precision("auto", device)
    train_split = data.subset(np.arange(len(data)))
    subset = type(dataset)(name=dataset.name, label_space=dataset.label_space,
                           splits={"train": train_split, "validation": data.subset(np.arange(64))}, notes=[])
    config = ClipFinetuneConfig(model=str(clip_dir), data=DataConfig(dataset="tiny_imagenet"),
                                train=TrainConfig(method="lora", max_steps=steps, batch_size=batch,
                                                  eval_every=10_000, logging_steps=10_000, lr=1e-4),
                                images=ImageDecodingConfig(num_workers=None if args.quick else 16),
                                runtime=RuntimeConfig(precision=precision))
    trainer, _ = build_clip_trainer(config, subset, lora_model(), tokenizer, processor, ["a photo of a {}"],
                                    work / "clip-tl", evaluate=False)
    timer = step_timer(warmup)
    trainer.add_callback(timer)
    with gpu:
        trainer.train()
    tunelab_rate, start, end = timer.rate(batch)
    return {"reference_images_per_s": reference_rate, "tunelab_images_per_s": tunelab_rate,
            "ratio": tunelab_rate / reference_rate, "reference_gpu_util": reference_util,
            "tunelab_gpu_util": gpu.mean_between(start, end), "tunelab_precision": precision, "batch": batch,
            "reference_batch": batch_ref}


def zero_shot(args, device, work: Path, gpu: Utilisation, clip_dir: Path) -> dict:
    import torch
    import yaml
    from transformers import AutoImageProcessor, CLIPModel

    import tunelab
    from tunelab.core.config import DataConfig, ImageLoadingConfig
    from tunelab.data.images import load_image_dataset
    from tunelab.encoders.clip import class_embeddings, image_embeddings, logit_scale

    dataset = load_image_dataset(DataConfig(dataset="tiny_imagenet", splits=["validation"]), flat_split="test")
    data = dataset.splits["validation"]
    n_reference = 16 if args.quick else 500
    model = CLIPModel.from_pretrained(clip_dir).to(device).eval()
    processor = AutoImageProcessor.from_pretrained(clip_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    classes = class_embeddings(model, tokenizer, dataset.class_names, ["a photo of a {}"], device)
    scale = logit_scale(model)
    start = time.perf_counter()
    with gpu, torch.inference_mode():  # the reference: one image at a time
        for i in range(n_reference):
            pixels = processor(images=data.load(i), return_tensors="pt")["pixel_values"].to(device)
            (scale * image_embeddings(model, pixels) @ classes.T).argmax(-1).item()
    reference_rate = n_reference / (time.perf_counter() - start)
    reference_util = gpu.mean
    del model
    n = 64 if args.quick else len(data)
    config = tunelab.ZeroshotConfig(
        model=str(clip_dir), data=DataConfig(dataset="tiny_imagenet", splits=["validation"],
                                             max_eval_samples=n if args.quick else None),
        images=ImageLoadingConfig(batch_size=256, num_workers=None if args.quick else 16))
    start = time.perf_counter()
    with gpu:
        result = tunelab.zeroshot(config, out=work / "zeroshot")
    wall = time.perf_counter() - start
    eval_end = start + wall
    eval_seconds = result.metrics["timing"]["seconds"]["eval"]
    return {"images": n, "reference_images_per_s": reference_rate,
            "reference_seconds_for_all": n / reference_rate, "tunelab_eval_seconds": eval_seconds,
            "tunelab_wall_seconds": wall, "tunelab_images_per_s": n / eval_seconds,
            "ratio": (n / eval_seconds) / reference_rate, "reference_gpu_util": reference_util,
            "tunelab_gpu_util": gpu.mean_between(eval_end - result.metrics["timing"]["seconds"]["eval"], eval_end),
            "tunelab_precision": yaml.safe_load((result.run_dir / "config.yaml").read_text())["runtime"]["precision"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("TUNELAB_DATA_DIR", "../shared/data"))
    parser.add_argument("--tokenizer", default=None, help="a BERT-uncased tokenizer folder (default: minilm's)")
    parser.add_argument("--only", choices=["text", "clip", "zeroshot"], action="append")
    parser.add_argument("--quick", action="store_true", help="a few steps and images: checks the script runs")
    args = parser.parse_args(argv)
    os.environ["TUNELAB_DATA_DIR"] = args.data_dir
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.tokenizer is None:
        from tunelab.models.resolve import resolve_model

        args.tokenizer = resolve_model("minilm").location

    import torch
    import transformers

    from tunelab.core.runtime import resolve_device
    from tunelab.models.architectures import arch_config, char_clip_tokenizer, clip_image_processor

    transformers.logging.set_verbosity_error()
    device = resolve_device("auto")
    work = Path(tempfile.mkdtemp(prefix="tunelab-gpu-lab-"))
    os.environ.setdefault("TUNELAB_CACHE_DIR", str(work / "cache"))
    gpu = Utilisation()
    torch.manual_seed(0)
    clip_dir = work / "clip"
    from transformers import CLIPModel

    CLIPModel(arch_config("openai/clip-vit-base-patch16")).save_pretrained(clip_dir)
    char_clip_tokenizer().save_pretrained(clip_dir)
    clip_image_processor().save_pretrained(clip_dir)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    results = {"benchmark": "gpu_lab", "device": name}
    wanted = args.only or ["text", "clip", "zeroshot"]
    for key, run in (("text", lambda: text_finetune(args, device, work, gpu)),
                     ("clip", lambda: clip_lora(args, device, work, gpu, clip_dir)),
                     ("zeroshot", lambda: zero_shot(args, device, work, gpu, clip_dir))):
        if key in wanted:
            start = time.perf_counter()
            results[key] = run()
            results[key]["seconds"] = time.perf_counter() - start
            print(f"{key}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in results[key].items()), flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
