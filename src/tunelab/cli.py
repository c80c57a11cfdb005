"""Command line: parse flags, build a typed config, call the library, print.

Each config flag names the dotted config key it sets; flags not given leave the
preset/YAML value (or the default) in place.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from tunelab import __version__
from tunelab.errors import TunelabError

logger = logging.getLogger("tunelab")

CONFIG_PREFIX = "cfg:"


def _flag(parser, *names: str, key: str, help: str, **kwargs) -> None:
    parser.add_argument(*names, dest=CONFIG_PREFIX + key, default=None, help=help, **kwargs)


def _switch(parser, name: str, key: str, help: str, value: Any = True) -> None:
    parser.add_argument(name, dest=CONFIG_PREFIX + key, action="store_const", const=value,
                        default=None, help=help)


def _add_common(parser: argparse.ArgumentParser, default_model: str) -> None:
    parser.add_argument("--config", metavar="FILE.yaml|PRESET",
                        help="a YAML config or a shipped preset (e.g. lab03-probe); flags override it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set features.batch_size=128")
    parser.add_argument("--out", metavar="DIR", help="run directory (default runs/<command>-<timestamp>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing run directory at --out")
    _flag(parser, "--model", key="model", metavar="M",
          help=f"hub id, local directory, or alias 'minilm' (default {default_model})")
    _flag(parser, "--seed", key="seed", type=int, help="random seed (default 42)")
    data = parser.add_argument_group("data")
    _flag(data, "--dataset", key="data.dataset", metavar="D",
          help="rotten_tomatoes, tiny_imagenet, or a local file/folder")
    _flag(data, "--text-column", key="data.text_column", help="text column (default text)")
    _flag(data, "--label-column", key="data.label_column", help="label column (default label)")
    _flag(data, "--positive-label", key="data.positive_label",
          help="binary tasks: the class scored as positive")
    _flag(data, "--max-train-samples", key="data.max_train_samples", type=int, metavar="N",
          help="cap the train split (stratified, seeded)")
    _flag(data, "--max-eval-samples", key="data.max_eval_samples", type=int, metavar="N",
          help="cap each evaluation split (stratified, seeded)")
    _flag(data, "--splits", key="data.splits", metavar="S[,S]",
          help="evaluation splits (default: every labelled split but train)")
    runtime = parser.add_argument_group("runtime")
    _flag(runtime, "--device", key="runtime.device", choices=["auto", "cpu", "cuda", "mps"],
          help="default auto")
    _flag(runtime, "--precision", key="runtime.precision", choices=["fp32", "bf16", "fp16"],
          help="default fp32 (bf16 is much faster on CPUs with bf16 units)")
    _switch(runtime, "--wandb", "tracking.wandb", "also log to Weights & Biases (honours WANDB_MODE)")


def _add_image_flags(parser: argparse.ArgumentParser) -> None:
    images = parser.add_argument_group("images")
    _flag(images, "--batch-size", key="images.batch_size", type=int, help="images per batch (default 64)")
    _flag(images, "--num-workers", key="images.num_workers", type=int,
          help="DataLoader worker processes that decode images (default: up to 4)")
    _switch(images, "--strict", "images.strict", "stop at the first unreadable image instead of skipping it")


def _add_training_flags(parser: argparse.ArgumentParser, image: bool) -> None:
    train = parser.add_argument_group("training")
    _flag(train, "--method", key="train.method", choices=["full", "lora"],
          help="default full for text, lora for CLIP")
    _flag(train, "--epochs", key="train.epochs", type=float, help="train for N epochs (replaces max steps)")
    _flag(train, "--max-steps", key="train.max_steps", type=int, help="optimiser steps (default 1000)")
    _flag(train, "--lr", key="train.lr", type=float,
          help="learning rate (text: 2e-5 full, 1e-3 LoRA; CLIP: 1e-5 full, 1e-4 LoRA)")
    _flag(train, "--warmup", key="train.warmup", type=float, help="below 1: fraction of steps; else steps")
    _flag(train, "--weight-decay", key="train.weight_decay", type=float, help="default 0.01")
    if not image:  # image commands take --batch-size in their images group
        _flag(train, "--batch-size", key="train.batch_size", type=int, help="per device (default 16)")
    _flag(train, "--eval-batch-size", key="train.eval_batch_size", type=int, help="default 64")
    _flag(train, "--grad-accum", key="train.grad_accum", type=int, help="gradient accumulation steps")
    if not image:
        _flag(train, "--max-length", key="train.max_length", type=int, help="tokens per text (default 512)")
    _flag(train, "--eval-every", key="train.eval_every", type=int, help="steps between evaluations (100)")
    _flag(train, "--save-total-limit", key="train.save_total_limit", type=int, help="checkpoints kept (2)")
    _flag(train, "--early-stopping", key="train.early_stopping", type=int, metavar="N",
          help="stop after N evaluations without improvement")
    _flag(train, "--metric", key="train.best_metric", choices=["accuracy", "f1", "f1_macro", "loss"],
          help="validation metric that picks the best checkpoint (default accuracy)")
    _switch(train, "--merge-lora", "train.merge_lora", "also save LoRA merged into full weights")
    _switch(train, "--gradient-checkpointing", "train.gradient_checkpointing", "save memory on large models")
    lora = parser.add_argument_group("LoRA")
    _flag(lora, "--lora-r", key="lora.r", type=int, help="rank (default 8)")
    _flag(lora, "--lora-alpha", key="lora.alpha", type=float, help="scale (default 32)")
    _flag(lora, "--lora-dropout", key="lora.dropout", type=float, help="default 0.1")
    _flag(lora, "--lora-targets", key="lora.targets", metavar="M[,M]",
          help="module names (default: the architecture's query/value projections)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunelab",
        description="How far does a pretrained transformer get on your classification data?",
    )
    parser.add_argument("--version", action="version", version=f"tunelab {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print warnings and errors only")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    probe = commands.add_parser("probe", help="frozen encoder features + a classical classifier",
                                description="Frozen-feature probe: encoder features + SVC/logreg.")
    _add_common(probe, "distilbert-base-uncased")
    feats = probe.add_argument_group("features")
    _flag(feats, "--pooling", key="features.pooling", choices=["cls", "mean"],
          help="[CLS] vector or masked mean of the last hidden states (default cls)")
    _flag(feats, "--max-length", key="features.max_length", type=int, help="tokens per text (default 512)")
    _flag(feats, "--batch-size", key="features.batch_size", type=int, help="texts per batch (default 64)")
    _switch(feats, "--no-cache", "features.cache", "recompute features even if cached", value=False)
    clf = probe.add_argument_group("classifier")
    _flag(clf, "--classifier", key="classifier.kind", choices=["svc", "logreg"], help="default svc")
    _flag(clf, "--C", key="classifier.c", type=float, help="regularisation strength (default 1.0)")
    _switch(clf, "--standardize", "classifier.standardize", "scale features before the classifier")
    _switch(clf, "--tune", "classifier.tune", "choose C on the validation split")
    probe.set_defaults(handler=_run_probe)

    finetune = commands.add_parser("finetune", help="fine-tune an encoder for classification (full or LoRA)",
                                   description="Fine-tune for sequence classification: full or LoRA.")
    _add_common(finetune, "distilbert-base-uncased")
    finetune.add_argument("--resume", action="store_true",
                          help="continue the run in --out from its last checkpoint")
    _add_training_flags(finetune, image=False)
    finetune.set_defaults(handler=_run_finetune)

    zeroshot = commands.add_parser("zeroshot", help="CLIP zero-shot image classification",
                                   description="CLIP zero-shot: class prompts against images, no training.")
    _add_common(zeroshot, "openai/clip-vit-base-patch16")
    _add_image_flags(zeroshot)
    _flag(zeroshot, "--templates", key="templates", metavar="simple|ensemble|FILE",
          help="prompt templates (default simple: 'a photo of a {}')")
    zeroshot.set_defaults(handler=_run_zeroshot)

    clip_ft = commands.add_parser("clip-finetune", help="fine-tune CLIP for image classification (LoRA or full)",
                                  description="CLIP fine-tuning with LoRA (default) or in full.")
    _add_common(clip_ft, "openai/clip-vit-base-patch16")
    clip_ft.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _add_image_flags(clip_ft)
    _flag(clip_ft, "--templates", key="templates", metavar="simple|ensemble|FILE",
          help="evaluation prompts (training uses the first template)")
    _flag(clip_ft, "--loss", key="loss", choices=["contrastive", "ce"],
          help="contrastive (the reference) or ce against every class prompt")
    _add_training_flags(clip_ft, image=True)
    clip_ft.set_defaults(handler=_run_clip_finetune)

    run = commands.add_parser("run", help="run a study: several steps, one comparison report",
                              description="Run a study (a YAML file or a preset such as lab03-offline).")
    run.add_argument("study", metavar="STUDY.yaml|PRESET")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="a study variable (clip_model=PATH), a shared setting (seed=1), or STEP.key=value")
    run.add_argument("--out", metavar="DIR", help="study directory (default runs/study-<name>-<timestamp>); "
                     "rerunning into it keeps completed steps")
    run.set_defaults(handler=_run_study)

    report = commands.add_parser("report", help="compare run directories in Markdown and HTML",
                                 description="Compare runs (run or study directories) in report.md/.html.")
    report.add_argument("dirs", nargs="+", metavar="DIR")
    report.add_argument("--out", metavar="FILE", default="report.md", help="Markdown file; HTML is written beside it")
    report.add_argument("--baseline", metavar="RUN", help="run name the deltas are measured against (default: first)")
    report.add_argument("--title", default="tunelab report")
    report.set_defaults(handler=_run_report)

    info = commands.add_parser("info", help="parameter counts of a model, with or without LoRA",
                               description="Total and trainable parameter counts (no weights are loaded).")
    info.add_argument("--model", required=True, help="hub id, local directory, alias, or a shipped architecture")
    info.add_argument("--random-init", action="store_true",
                      help="use tunelab's shipped architecture config (no network, no weights)")
    info.add_argument("--lora-r", type=int, help="count a LoRA-wrapped model of this rank")
    info.add_argument("--lora-alpha", type=float, default=32.0)
    info.add_argument("--lora-targets", help="comma-separated module names (default: query/value projections)")
    info.add_argument("--num-labels", type=int, help="text models: add a classification head of N classes")
    info.set_defaults(handler=_run_info)

    predict = commands.add_parser("predict", help="classify new inputs with a finished run",
                                  description="Classify texts with the model in a run directory.")
    predict.add_argument("run_dir", metavar="DIR")
    predict.add_argument("inputs", nargs="*", metavar="INPUT", help="texts to classify")
    predict.add_argument("--input", dest="input_file", metavar="FILE",
                         help="CSV/JSONL/Parquet (column text) or .txt (one per line)")
    predict.add_argument("--text-column", help="column of --input to read")
    predict.add_argument("--output", metavar="FILE.csv", help="write predictions here instead of printing")
    predict.set_defaults(handler=_run_predict)
    for sub in commands.choices.values():  # also accepted after the command
        sub.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from tunelab.config import parse_assignment

    overrides = {}
    for assignment in args.set:
        key, value = parse_assignment(assignment)
        overrides[key] = value
    for dest, value in vars(args).items():
        if dest.startswith(CONFIG_PREFIX) and value is not None:
            overrides[dest[len(CONFIG_PREFIX):]] = value
    return overrides


def _run_probe(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from tunelab.config import build_config
    from tunelab.tasks.probe import ProbeConfig, run_probe

    config = build_config(ProbeConfig, "probe", args.config, config_overrides(args))
    result = run_probe(config, out=args.out, overwrite=args.overwrite, argv=argv)
    _print_summary(result)
    return 0


def _run_finetune(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from tunelab.tasks.finetune import FinetuneConfig, run_finetune

    config = _training_config(args, FinetuneConfig, "finetune")
    result = run_finetune(config, out=args.out, overwrite=args.overwrite, resume=args.resume, argv=argv)
    _print_summary(result)
    return 0


def _run_zeroshot(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from tunelab.config import build_config
    from tunelab.tasks.zeroshot import ZeroshotConfig, run_zeroshot

    config = build_config(ZeroshotConfig, "zeroshot", args.config, config_overrides(args))
    _print_summary(run_zeroshot(config, out=args.out, overwrite=args.overwrite, argv=argv))
    return 0


def _run_clip_finetune(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from tunelab.tasks.clip_finetune import ClipFinetuneConfig, run_clip_finetune

    config = _training_config(args, ClipFinetuneConfig, "clip-finetune")
    if "images.batch_size" in config_overrides(args):
        config.train.batch_size = config.images.batch_size
    result = run_clip_finetune(config, out=args.out, overwrite=args.overwrite, resume=args.resume, argv=argv)
    _print_summary(result)
    return 0


def _training_config(args: argparse.Namespace, cls, command: str):
    """Flags over the preset, or with --resume the run's own saved config."""
    from pathlib import Path

    from tunelab.config import build_config

    overrides = config_overrides(args)
    if "train.epochs" in overrides and "train.max_steps" not in overrides:
        overrides["train.max_steps"] = None  # --epochs replaces the preset's step count
    if args.resume and args.out and (Path(args.out) / "config.yaml").is_file():
        if overrides or args.config:
            logger.warning("--resume continues with the run's own config.yaml; other settings are ignored")
        return build_config(cls, command, str(Path(args.out) / "config.yaml"))
    return build_config(cls, command, args.config, overrides)


def _run_study(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from tunelab.config import parse_assignment
    from tunelab.study import load_study, run_study

    assignments = dict(parse_assignment(a) for a in args.set)
    study = load_study(args.study, assignments)
    root, outcomes = run_study(study, out=args.out)
    width = max(len(o.name) for o in outcomes) if outcomes else 4
    for o in outcomes:
        print(f"{o.name:<{width}}  {o.status:<9}  {o.detail}")
    print(f"report: {root / 'report.md'} and {root / 'report.html'}")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def _run_report(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from pathlib import Path

    from tunelab.report import find_runs, write_report

    missing = [d for d in args.dirs if not Path(d).is_dir()]
    if missing:
        raise TunelabError(f"not a directory: {missing[0]}")
    if not find_runs(args.dirs):
        raise TunelabError("no finished runs (directories with metrics.json) in " + ", ".join(args.dirs))
    md, html = write_report(args.dirs, args.out, title=args.title, baseline=args.baseline)
    print(f"wrote {md} and {html}")
    return 0


def _run_info(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from tunelab.info import model_info

    targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()] if args.lora_targets else None
    info = model_info(args.model, random_init=args.random_init, lora_r=args.lora_r, lora_targets=targets,
                      lora_alpha=args.lora_alpha, num_labels=args.num_labels)
    print(info.describe())
    return 0


def _run_predict(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from tunelab.predict import predict, read_inputs
    from tunelab.runs import atomic_write_bytes

    inputs = list(args.inputs)
    if args.input_file:
        inputs += read_inputs(args.input_file, args.text_column)
    predictions = predict(args.run_dir, inputs)
    if args.output:
        import csv
        import io
        from pathlib import Path

        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["input", "prediction", predictions[0].score_kind])
        for p in predictions:
            writer.writerow([p.input, p.label, f"{p.score:.6g}"])
        atomic_write_bytes(Path(args.output), buffer.getvalue().encode("utf-8"))
        print(f"wrote {len(predictions)} predictions to {args.output}")
    else:
        for p in predictions:
            print(f"{p.label}\t{p.score:.4f}\t{p.input}")
    return 0


def _print_summary(result) -> None:
    from tunelab.report import metrics_table

    if not result.metrics:  # a non-zero rank of a distributed run: rank 0 reports
        return
    print(metrics_table(result.metrics["splits"]))
    print(f"run directory: {result.run_dir}")


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # libraries' deprecation notices
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("TUNELAB_DEBUG") == "1"
    _setup_logging(args.quiet)
    try:
        return args.handler(args, argv)
    except TunelabError as exc:
        if debug:
            raise
        print(f"tunelab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tunelab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"tunelab: unexpected error: {type(exc).__name__}: {first} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
