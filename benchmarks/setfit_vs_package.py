"""SetFit: the ``setfit`` package's own trainer (the baseline) and ``tunelab setfit`` on
the same few labelled Rotten Tomatoes examples, the same seeds and the same settings
(batch 16, 20 iterations, one epoch, logistic regression head, fp32), in one process.

    python benchmarks/setfit_vs_package.py [--model minilm] [--shots 8] [--seeds 0,1,2] [--quick]

Both sides train on exactly the examples tunelab's ``--shots`` draws for that seed and
are scored on the same test sentences. Prints each seed's test accuracy for both, their
means, and the speed ratio (tunelab's training examples per second over the package's,
stage 1 and the head together). Ends with one JSON line. Needs ``pip install setfit``
(it is not a tunelab dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def run_package(model_dir: str, texts, labels, test_texts, seed: int, workdir: Path) -> tuple[list, float]:
    """The setfit package with its defaults and num_iterations=20: (test predictions, seconds).
    Its checkpoints go to ``workdir`` (by default it writes them where it runs)."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    start = time.perf_counter()
    model = SetFitModel.from_pretrained(model_dir)
    args = TrainingArguments(output_dir=str(workdir / f"package-seed{seed}"), batch_size=16, num_iterations=20,
                             num_epochs=1, seed=seed, report_to="none", show_progress_bar=False)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts, "label": labels}))
    trainer.train()
    seconds = time.perf_counter() - start
    return list(model.predict(test_texts, batch_size=64)), seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="hub id, local directory or alias (default minilm)")
    parser.add_argument("--data-dir", default=os.environ.get("TUNELAB_DATA_DIR", "../shared/data"))
    parser.add_argument("--shots", type=int, default=8, help="labelled examples per class (default 8)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--quick", action="store_true", help="one seed, 256 test sentences: a CI-sized run")
    args = parser.parse_args(argv)
    os.environ["TUNELAB_DATA_DIR"] = args.data_dir
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import setfit  # noqa: F401
    except ImportError:
        print("this benchmark runs the setfit package beside tunelab: pip install setfit", file=sys.stderr)
        return 2

    import numpy as np
    import torch

    import tunelab
    from tunelab.core.config import DataConfig, RuntimeConfig
    from tunelab.data.text import load_text_dataset
    from tunelab.models.resolve import resolve_model
    from tunelab.tasks.setfit import SetfitConfig

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    model_dir = resolve_model(args.model).location
    seeds = [int(s) for s in args.seeds.split(",")][:1 if args.quick else None]
    workdir = Path(tempfile.mkdtemp(prefix="tunelab-setfit-bench-"))
    rows = []
    for seed in seeds:
        data = DataConfig(dataset="rotten_tomatoes", shots=args.shots, splits=["test"],
                          max_eval_samples=256 if args.quick else None)
        dataset = load_text_dataset(data, seed=seed)
        train, test = dataset.splits["train"], dataset.splits["test"]
        names = dataset.class_names
        predicted, package_seconds = run_package(model_dir, train.texts, [names[i] for i in train.labels],
                                                 test.texts, seed, workdir)
        package_accuracy = float(np.mean(np.asarray(predicted) == np.asarray([names[i] for i in test.labels])))
        config = SetfitConfig(model=args.model, data=data, seed=seed, runtime=RuntimeConfig(precision="fp32"))
        start = time.perf_counter()
        result = tunelab.setfit(config, out=workdir / f"seed{seed}")
        seconds = time.perf_counter() - start
        timing = result.metrics["timing"]["seconds"]
        # The same work on both sides: stage 1 and the head (tunelab's train figure holds both).
        tunelab_train = timing["train"] + timing.get("embed", 0.0) * len(train) / (len(train) + len(test))
        rows.append({"seed": seed, "package_accuracy": round(package_accuracy, 4),
                     "tunelab_accuracy": round(result.split("test")["accuracy"], 4),
                     "package_train_s": round(package_seconds, 2), "tunelab_train_s": round(tunelab_train, 2),
                     "tunelab_run_s": round(seconds, 2)})
        print(f"seed {seed}: setfit package {package_accuracy:.4f} ({package_seconds:.1f} s), tunelab "
              f"{rows[-1]['tunelab_accuracy']:.4f} ({tunelab_train:.1f} s training, {seconds:.1f} s whole run)")
    package_mean = float(np.mean([r["package_accuracy"] for r in rows]))
    tunelab_mean = float(np.mean([r["tunelab_accuracy"] for r in rows]))
    ratio = sum(r["package_train_s"] for r in rows) / sum(r["tunelab_train_s"] for r in rows)
    print(f"mean test accuracy: setfit package {package_mean:.4f}, tunelab {tunelab_mean:.4f}; "
          f"training speed ratio (tunelab / package) {ratio:.2f}")
    print(json.dumps({"benchmark": "setfit", "model": args.model, "shots": args.shots, "seeds": seeds,
                      "package_mean_accuracy": round(package_mean, 4), "tunelab_mean_accuracy": round(tunelab_mean, 4),
                      "ratio_train_speed": round(ratio, 2), "runs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
