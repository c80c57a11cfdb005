"""The commands that are not tasks (run, search, report, info, predict, export; serve has its own module): each
one's arguments, and its handler that calls the library and prints. Task commands are
built from the registry (tunelab.cli.build_parser) and run by ``run_task_command``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from tunelab.analysis.runs import find_runs
from tunelab.cli.parsing import CONFIG_PREFIX
from tunelab.core.config import build_config, parse_assignment
from tunelab.core.errors import TunelabError, counted
from tunelab.core.presets import list_presets
from tunelab.core.registry import get_task
from tunelab.core.safety import atomic_write_bytes
from tunelab.core.typed import set_dotted
from tunelab.report.document import write_report
from tunelab.serve.export import export_onnx
from tunelab.serve.predict import predict, read_inputs, run_pair_columns
from tunelab.study.run import run_study
from tunelab.study.search import parse_space_flag
from tunelab.study.spec import load_study, plan_study
from tunelab.tasks.lifecycle import run_task
from tunelab.tasks.run_report import metrics_table
from tunelab.training.info import model_info

logger = logging.getLogger("tunelab")



def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {}
    for assignment in args.set:
        key, value = parse_assignment(assignment)
        overrides[key] = value
    for dest, value in vars(args).items():
        if dest.startswith(CONFIG_PREFIX) and value is not None:
            overrides[dest[len(CONFIG_PREFIX):]] = value
    return overrides


def run_task_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from pathlib import Path

    task = get_task(args.task_name)
    overrides = config_overrides(args)
    resume = getattr(args, "resume", False)
    if resume and args.out and (Path(args.out) / "config.yaml").is_file():
        if overrides or args.config:
            logger.warning("--resume continues with the run's own config.yaml; other settings are ignored")
        config = build_config(task.config_class, task.name, str(Path(args.out) / "config.yaml"))
    else:
        config = build_config(task.config_class, task.name, args.config, overrides)
    result = run_task(task, config, out=args.out, overwrite=args.overwrite, resume=resume, argv=argv)
    _print_summary(result)
    return 0


def _run_study(args: argparse.Namespace, argv: Sequence[str]) -> int:
    assignments = dict(parse_assignment(a) for a in args.set)
    if args.target is not None:
        assignments["target"] = args.target
    study = load_study(args.study, assignments)
    if args.dry_run:
        planned = plan_study(study)  # every check the real run makes before its first step
        width = max(len(p.step.name) for p in planned) if planned else 4
        for p in planned:
            print(f"{p.step.name:<{width}}  {p.step.command:<13}  {p.detail}")
        print(f"{counted(sum(p.runs for p in planned), 'run')} in "
              f"{counted(len({p.step.group for p in planned}), 'step')}")
        return 0
    root, outcomes = run_study(study, out=args.out, jobs=args.jobs, executor=args.executor,
                               ray_address=args.ray_address)
    width = max(len(o.name) for o in outcomes) if outcomes else 4
    for o in outcomes:
        print(f"{o.name:<{width}}  {o.status:<9}  {o.detail}")
    print(f"report: {root / 'report.md'} and {root / 'report.html'}")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def _run_search(args: argparse.Namespace, argv: Sequence[str]) -> int:
    step: dict = {"name": args.search_command, "command": args.search_command,
                  "search": {"space": dict(parse_space_flag(s) for s in args.space), "trials": args.trials,
                             "metric": args.metric, "sampler": args.sampler, "pruner": args.pruner,
                             "seed": args.search_seed}}
    for key, value in [("model", args.model), ("data.dataset", args.dataset),
                       *(parse_assignment(a) for a in args.set)]:
        if value is not None:
            set_dotted(step, key, value)
    study = load_study({"name": f"search-{args.search_command}", "steps": [step]})
    root, outcomes = run_study(study, out=args.out)
    for o in outcomes:
        print(f"{o.name}  {o.status}  {o.detail}")
    print(f"report: {root / 'report.md'} and {root / 'report.html'}")
    return 1 if all(o.status == "failed" for o in outcomes) else 0


def _run_report(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from pathlib import Path

    missing = [d for d in args.dirs if not Path(d).is_dir()]
    if missing:
        raise TunelabError(f"not a directory: {missing[0]}")
    if not find_runs(args.dirs):
        raise TunelabError("no finished runs (directories with metrics.json) in " + ", ".join(args.dirs))
    md, html = write_report(args.dirs, args.out, title=args.title, baseline=args.baseline, target=args.target)
    print(f"wrote {md} and {html}")
    return 0


def _run_info(args: argparse.Namespace, argv: Sequence[str]) -> int:
    targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()] if args.lora_targets else None
    info = model_info(args.model, random_init=args.random_init, lora_r=args.lora_r, lora_targets=targets,
                      lora_alpha=args.lora_alpha, num_labels=args.num_labels, batch_size=args.batch_size,
                      sequence=args.seq_len, precision=args.precision)
    print(info.describe())
    return 0


def _run_predict(args: argparse.Namespace, argv: Sequence[str]) -> int:
    inputs: list = list(args.inputs) + [tuple(pair) for pair in args.pair]
    if args.input_file:
        text_column, pair_column = run_pair_columns(args.run_dir, args.input_file, args.text_column,
                                                    args.text_pair_column)
        read = read_inputs(args.input_file, text_column, pair_column)
        inputs += list(zip(read.texts, read.pairs)) if hasattr(read, "pairs") else read
    predictions = predict(args.run_dir, inputs, backend=args.backend, precision=args.precision)
    pairs = any(p.pair is not None for p in predictions)
    if args.output:
        import csv
        import io
        from pathlib import Path

        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["input", *(["pair"] if pairs else []), "prediction", predictions[0].score_kind])
        for p in predictions:
            writer.writerow([p.input, *([p.pair] if pairs else []), p.label, f"{p.score:.6g}"])
        atomic_write_bytes(Path(args.output), buffer.getvalue().encode("utf-8"), own_folder=False)
        print(f"wrote {counted(len(predictions), 'prediction')} to {args.output}")
    else:
        kind = predictions[0].score_kind if predictions else "score"
        values = kind == "value"  # regression: the prediction is the number, printed once
        name = SCORE_NAMES.get(kind, kind)
        if predictions and predictions[0].labels is not None:  # label sets: the best label's score
            name = f"highest label {name}"
        print("\t".join(["value" if values else "prediction", *([] if values else [name]),
                         "input", *(["pair"] if pairs else [])]))
        for p in predictions:
            print("\t".join([p.label, *([] if values else [f"{p.score:.4f}"]), p.input, *([p.pair] if pairs else [])]))
    return 0


# What predict's score column holds, by the kind of score a run gives.
SCORE_NAMES = {"probability": "probability", "decision": "decision value",
               "similarity": "similarity", "logit": "logit", "value": "value"}


def _run_export(args: argparse.Namespace, argv: Sequence[str]) -> int:
    record = export_onnx(args.run_dir, quantize=args.quantize)
    line = (f"wrote {args.run_dir}/onnx (largest {record['output']} difference to PyTorch "
            f"{record['max_abs_output_difference']:.1e}; predictions agree on {record['prediction_agreement']:.1%})")
    int8 = record.get("int8") or {}
    if int8.get("agreement_with_fp32") is not None:
        line += f"; int8 agrees with fp32 on {int8['agreement_with_fp32']:.1%} of {record['checked_examples']} examples"
    if "accuracy_change" in int8:
        line += f", accuracy change {int8['accuracy_change']:+.4f}"
    print(line)
    return 0


def _print_summary(result) -> None:
    if not result.metrics:  # a non-zero rank of a distributed run: rank 0 reports
        return
    print(metrics_table(result.metrics["splits"]))
    print(f"run directory: {result.run_dir}")


TARGET_HELP = ("a score of the headline metric: the report says how many labels each learning curve needs to reach "
               "it (about N [low, high], or not within 4x the labels measured)")


def add_run_command(commands) -> None:
    """tunelab run STUDY"""
    run = commands.add_parser("run", help="run a study: several steps, one comparison report",
                              description="Run a study (a YAML file or a preset such as lab03-offline).",
                              epilog="presets: " + ", ".join(list_presets("study")))
    run.add_argument("study", metavar="STUDY.yaml|PRESET")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="a study variable (clip_model=PATH), a shared setting (seed=1), or STEP.key=value")
    run.add_argument("--out", metavar="DIR", help="study directory (default runs/study-<name>-<timestamp>); "
                     "rerunning into it keeps completed steps")
    run.add_argument("--target", type=float, metavar="VALUE", help=TARGET_HELP)
    run.add_argument("--dry-run", action="store_true", help="print the runs the study expands into, and stop")
    run.add_argument("--jobs", type=int, default=1, metavar="N",
                     help="runs at a time on this machine (CPU threads shared out, or one GPU each)")
    run.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="local (default), or each run a Ray task (pip install 'tunelab[ray]')")
    run.add_argument("--ray-address", metavar="ADDR",
                     help="an existing Ray cluster (default: start a local Ray instance for this study)")
    run.set_defaults(handler=_run_study)


def add_search_command(commands) -> None:
    """tunelab search COMMAND --space ..."""
    search = commands.add_parser("search", help="search one command's hyperparameters: trials on validation, the "
                                 "best on test", description="A hyperparameter search (Optuna) of one command, as a "
                                 "study step with a search block: every trial a run scored on validation only, the "
                                 "best trial's settings run once more on every split (COMMAND-best), one report.")
    search.add_argument("search_command", metavar="COMMAND", help="the command to search (probe, finetune, ...)")
    search.add_argument("--space", action="append", default=[], metavar="KEY=SPEC", required=True,
                        help="a setting and its range: train.lr=loguniform:1e-5,1e-2, train.warmup=uniform:0,0.2, "
                             "lora.r=int:4,16, or a list lora.r=4,8,16 (repeatable)")
    search.add_argument("--trials", type=int, default=20, metavar="N", help="trials to run (default 20)")
    search.add_argument("--metric", default="validation.accuracy", help="validation metric to optimise (its "
                        "direction is the metric's)")
    search.add_argument("--sampler", choices=["tpe", "random", "grid"], default="tpe")
    search.add_argument("--pruner", choices=["median", "asha", "none"], default="median",
                        help="stop trials whose validation curve falls behind (fine-tuning reports at every "
                             "evaluation)")
    search.add_argument("--search-seed", type=int, default=0, metavar="S", help="the sampler's seed")
    search.add_argument("--model", help="the command's --model")
    search.add_argument("--dataset", help="the command's --dataset")
    search.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any setting of the command (train.max_steps=80)")
    search.add_argument("--out", metavar="DIR", help="study directory (default runs/study-search-<command>-<time>); "
                        "rerunning into it continues a killed search")
    search.set_defaults(handler=_run_search)


def add_report_command(commands) -> None:
    """tunelab report DIR..."""
    report = commands.add_parser("report", help="compare run directories in Markdown and HTML",
                                 description="Compare runs (run or study directories) in report.md/.html.")
    report.add_argument("dirs", nargs="+", metavar="DIR")
    report.add_argument("--out", metavar="FILE", default="report.md", help="Markdown file; HTML is written beside it")
    report.add_argument("--baseline", metavar="RUN", help="the floor: the run (or study step) every Δ and paired test "
                        "is against (default: the best on validation of the runs with no pretrained model)")
    report.add_argument("--title", default="tunelab report")
    report.add_argument("--target", type=float, metavar="VALUE", help=TARGET_HELP)
    report.set_defaults(handler=_run_report)


def add_info_command(commands) -> None:
    """tunelab info --model M"""
    info = commands.add_parser("info", help="parameter counts of a model, with or without LoRA; training memory",
                               description="Total and trainable parameter counts (no weights are loaded), and with "
                                           "--batch-size an estimate of training memory.")
    info.add_argument("--model", required=True, help="hub id, local directory, alias, or a shipped architecture")
    info.add_argument("--random-init", action="store_true",
                      help="use tunelab's shipped architecture config (no network, no weights)")
    info.add_argument("--lora-r", type=int, help="count a LoRA-wrapped model of this rank")
    info.add_argument("--lora-alpha", type=float, default=32.0)
    info.add_argument("--lora-targets", help="comma-separated module names (default: query/value projections)")
    info.add_argument("--num-labels", type=int, help="add a classification head of N classes (text or image)")
    info.add_argument("--batch-size", type=int, metavar="N", help="also estimate training memory for this batch")
    info.add_argument("--seq-len", type=int, default=128, metavar="T", help="tokens per text for the estimate "
                      "(images count their patches)")
    info.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16",
                      help="training precision for the estimate")
    info.set_defaults(handler=_run_info)


def add_predict_command(commands) -> None:
    """tunelab predict RUN INPUT..."""
    predict = commands.add_parser("predict", help="predict for new inputs with a finished run",
                                  description="Predict for texts, sentence pairs or images with the model in a run "
                                              "directory. Options may come before, between or after the inputs; "
                                              "-- ends the options, for a text that starts with '-' "
                                              "(tunelab predict RUN -- '-1 star: awful').")
    predict.add_argument("run_dir", metavar="DIR", help="a finished run directory (runs/<command>-<time>, or a "
                                                        "study's run)")
    predict.add_argument("inputs", nargs="*", metavar="INPUT", help="texts (or image files) to predict for")
    predict.add_argument("--pair", nargs=2, action="append", default=[], metavar=("FIRST", "SECOND"),
                         help="a sentence pair (repeatable)")
    predict.add_argument("--input", dest="input_file", metavar="FILE",
                         help="CSV/TSV/JSONL/Parquet (column text; for pairs also the run's pair column) or .txt "
                              "(one text per line)")
    predict.add_argument("--text-column", help="column of --input to read (default: the run's, else text)")
    predict.add_argument("--text-pair-column", help="second text column of --input (default: the run's)")
    predict.add_argument("--output", metavar="FILE.csv", help="write predictions here instead of printing")
    predict.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default="torch",
                         help="torch (default), or the run's ONNX export through ONNX Runtime (tunelab export)")
    predict.add_argument("--precision", choices=["fp32", "bf16", "fp16", "run"], default=None,
                         help="torch: fp32 gives the saved model's outputs exactly as transformers' pipeline() "
                              "does (the default for fine-tuned runs); run: the run's own, which reproduces its "
                              "predictions files (the default for probes and zero-shot); bf16 is faster on CPUs "
                              "with bf16 units")
    predict.set_defaults(handler=_run_predict)


def add_export_command(commands) -> None:
    """tunelab export RUN"""
    export = commands.add_parser("export", help="export a run's transformer (ONNX, optionally int8)",
                                 description="Export the transformer of a text run's predictor to RUN/onnx (a "
                                             "fine-tuned classifier or bi-encoder, a probe's encoder), checked "
                                             "against PyTorch on the run's own examples; predict --backend onnx "
                                             "then serves it with the run's own head or classifier.")
    export.add_argument("run_dir", metavar="RUN", help="a finished text run directory (finetune or probe)")
    export.add_argument("--format", choices=["onnx"], default="onnx",
                        help="onnx: an ONNX model served by ONNX Runtime (the only format so far)")
    export.add_argument("--quantize", choices=["int8"], help="also write a dynamically quantised int8 model")
    export.set_defaults(handler=_run_export)
