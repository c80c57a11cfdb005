"""tunelab select RUN --pool FILE --k N: the command's arguments and its handler, which
calls tunelab.serve.select.select and writes the rows to label."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from tunelab.serve.predict import BACKENDS
from tunelab.serve.select import STRATEGIES, select, write_selection


def add_select_command(commands) -> None:
    """tunelab select RUN --pool FILE --k N"""
    parser = commands.add_parser(
        "select", help="rank unlabelled examples by what a run is least sure of: which to label next",
        description="Choose the unlabelled examples to label next with a finished run's predictor: entropy or margin "
                    "(the least sure first), diverse (uncertain and spread out, no near copies in one batch) or "
                    "random. Writes the rows with their score and the run's predicted label.")
    parser.add_argument("run_dir", metavar="RUN", help="a finished run directory that predicts classes")
    parser.add_argument("--pool", required=True, metavar="FILE",
                        help="unlabelled inputs: any file predict reads (CSV/TSV/JSONL/Parquet, .txt), or a folder "
                             "of images")
    parser.add_argument("--k", type=int, required=True, metavar="N", help="how many examples to choose")
    parser.add_argument("--strategy", choices=STRATEGIES, default="entropy", help="default: entropy")
    parser.add_argument("--out", required=True, metavar="FILE.csv", help="where to write the chosen rows")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--seed", type=int, default=0, help="breaks ties (and orders random); default 0")
    parser.add_argument("--text-column", help="column of --pool to read (default: text, or the usual alternative)")
    parser.add_argument("--text-pair-column", help="second text column of --pool, for a run on sentence pairs")
    parser.add_argument("--embedder", default="minilm", help="diverse: the text encoder whose space spreads the "
                                                             "batch (default minilm)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help="as for predict")
    parser.set_defaults(handler=_run_select)


def _run_select(args: argparse.Namespace, argv: Sequence[str]) -> int:
    selected = select(args.run_dir, args.pool, args.k, args.strategy, args.seed, args.text_column,
                      args.text_pair_column, args.embedder, args.backend)
    path = write_selection(selected, args.out, args.strategy, args.overwrite)
    print(f"wrote {len(selected)} examples to label ({args.strategy}) to {path}")
    return 0
