"""A single run's own report.md (metrics, training summary, timings, data notes, per-class
reports, configuration) and the metrics table that the console and model cards print too.
The run lifecycle writes it; comparison reports are tunelab.report.document."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunelab.problems import headline_metric

METRIC_COLUMNS = ("accuracy", "precision", "recall", "f1", "precision_macro", "recall_macro",
                  "f1_macro", "balanced_accuracy", "top5_accuracy",
                  "f1_micro", "f1_samples", "subset_accuracy", "hamming_loss", "mean_average_precision",
                  "spearman", "pearson", "mse", "mae", "r2")
# The metrics the seed table shows, where a run has them (top-5 only with more than ten classes).

def metrics_table(splits: Mapping[str, Mapping[str, float]]) -> str:
    present = [m for m in METRIC_COLUMNS if any(m in v for v in splits.values())]
    lines = ["| split | n | " + " | ".join(present) + " |", "|---" * (len(present) + 2) + "|"]
    for split, values in splits.items():
        cells = [f"{values[m]:.4f}" if m in values else "" for m in present]
        lines.append(f"| {split} | {values.get('n', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_run_report(metrics: Mapping[str, Any], config_yaml: str,
                      class_reports: Mapping[str, str], notes: list[str]) -> str:
    """report.md: metrics, settings, timings, per-class reports."""
    lines = [f"# tunelab {metrics['command']}: {metrics['model']} on {metrics['dataset']}", ""]
    deduplicated = metrics.get("deduplicated") or {}
    if deduplicated:
        lines += ["## Data audit", ""]
        for split, record in deduplicated.items():
            total = record["copies_of_train"] + record["n"]
            metric = headline_metric(metrics["splits"][split])
            lines.append(f"- {record['copies_of_train']} of {total} {split} rows copy training rows (exact after "
                         f"normalising, or near); without them {metric} is {record['metrics'][metric]:.4f} against "
                         f"{metrics['splits'][split][metric]:.4f} with them. `tunelab audit` lists them; `--dedup` "
                         "drops copies from train.")
        lines += ["", "Deduplicated metrics:", "", metrics_table({f"{s} (deduplicated)": r["metrics"]
                                                                  for s, r in deduplicated.items()}), ""]
    lines += ["## Metrics", "", metrics_table(metrics["splits"]), ""]
    params = metrics.get("params")
    if params:
        lines += [f"Parameters: {params['trainable']:,} trainable of {params['total']:,}.", ""]
    extra = metrics.get("task", {}).get("classifier")
    if extra and extra.get("tuning"):
        tuning = extra["tuning"]
        tried = ", ".join(f"{c}: {s:.4f}" for c, s in tuning["scores"].items())
        lines += [f"Tuned {tuning['parameter']} on {tuning['split']} {tuning['metric']}: "
                  f"chose {tuning['chosen']} ({tried}).", ""]
    training = metrics.get("task", {}).get("training")
    if training:
        lines += ["## Training", ""]
        lines += [f"- {key.replace('_', ' ')}: {value}" for key, value in training.items() if value is not None]
        lines.append("")
    timing = metrics.get("timing", {})
    if timing:
        lines += ["## Timing", "", "| step | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in timing.get("seconds", {}).items()]
        lines += ["", "| throughput | per second |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in timing.get("throughput", {}).items() if v is not None]
        lines.append("")
    if notes:
        lines += ["## Data", ""] + [f"- {n}" for n in notes] + [""]
    for split, report in class_reports.items():
        lines += [f"## Per-class report: {split}", "", "```", report.rstrip(), "```", ""]
    env = metrics.get("environment", {})
    if env:
        lines += ["## Environment", "", ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    lines += ["## Configuration", "", "```yaml", config_yaml.rstrip(), "```", ""]
    return "\n".join(lines)
