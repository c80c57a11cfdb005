"""tunelab audit DATA: the command's arguments (the data and encoder flags every task
has, from AuditConfig) and its handler, which calls tunelab.audit.run.audit."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from types import SimpleNamespace

from tunelab.audit.run import AuditConfig, audit
from tunelab.cli.commands import config_overrides
from tunelab.cli.parsing import add_config_flags
from tunelab.core.config import build_config

# Settings an audit has no use for: no flag is made for them.
UNUSED = {"data.dataset", "tracking.wandb", "tracking.wandb_project", "data.shots", "data.validation_shots",
          "data.splits",
          "data.class_weight", "data.threshold", "data.positive_label", "data.max_eval_samples",
          "data.max_train_samples"}
AUDIT_TASK = SimpleNamespace(name="audit", config_class=AuditConfig, unused_settings=UNUSED)


def add_audit_command(commands) -> None:
    """tunelab audit DATA"""
    parser = commands.add_parser(
        "audit", help="find copies across splits, likely label errors and outliers in a data set",
        description="Audit a data set before trusting numbers made on it: exact and near copies within and across "
                    "splits (train-test leakage), copies whose labels disagree, likely label errors (confident "
                    "learning on out-of-fold probe predictions), outliers, one-word and truncated texts, class "
                    "balance. Writes audit.json, audit.csv and audit.md to --out.")
    parser.add_argument("dataset", metavar="DATA", help="any data spec tunelab reads (file, folder, hub id, name)")
    parser.add_argument("--config", metavar="FILE", help="a YAML file of audit settings")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any setting")
    parser.add_argument("--out", metavar="DIR", help="the audit's directory (default runs/audit-<timestamp>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an audit tunelab made at --out")
    add_config_flags(parser, AUDIT_TASK)
    parser.set_defaults(handler=_run_audit, task_name=None)


def _run_audit(args: argparse.Namespace, argv: Sequence[str]) -> int:
    overrides = config_overrides(args)
    overrides["data.dataset"] = args.dataset
    config = build_config(AuditConfig, "audit", args.config, overrides)
    audit(config, out=args.out, overwrite=args.overwrite, argv=list(argv))
    return 0
