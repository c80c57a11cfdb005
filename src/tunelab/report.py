"""Human-readable summaries of runs."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import re
import statistics
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tunelab.analysis import group_runs
from tunelab.metrics import headline_metric

METRIC_COLUMNS = ("accuracy", "precision", "recall", "f1", "precision_macro", "recall_macro",
                  "f1_macro", "balanced_accuracy", "top5_accuracy",
                  "f1_micro", "f1_samples", "subset_accuracy", "hamming_loss", "mean_average_precision",
                  "spearman", "pearson", "mse", "mae", "r2")
# Beside each run's headline metric, the comparison tables show these where present.
SIDE_METRICS = ("f1", "f1_macro", "balanced_accuracy", "top5_accuracy", "mean_average_precision", "subset_accuracy",
                "pearson", "mse", "mae")


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
    lines = [
        f"# tunelab {metrics['command']}: {metrics['model']} on {metrics['dataset']}",
        "",
        "## Metrics",
        "",
        metrics_table(metrics["splits"]),
        "",
    ]
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


# --------------------------------------------------------------------------- comparison reports


REPORT_METRICS = ("accuracy", "f1", "f1_macro", "top5_accuracy")


class Document:
    """A report as blocks, rendered to Markdown (images beside it) and to one
    self-contained HTML page (images embedded)."""

    def __init__(self):
        self.blocks: list[tuple] = []

    def heading(self, level: int, text: str):
        self.blocks.append(("heading", level, text))

    def paragraph(self, text: str):
        self.blocks.append(("paragraph", text))

    def table(self, header: list[str], rows: list[list[str]]):
        self.blocks.append(("table", header, rows))

    def image(self, name: str, png: bytes, caption: str):
        self.blocks.append(("image", name, png, caption))

    def code(self, summary: str, text: str):
        self.blocks.append(("code", summary, text))

    def markdown(self, assets: Path) -> str:
        """Markdown with every value escaped (names from the data or the user never become
        markup or HTML); images are written into ``assets``, a folder tunelab owns."""
        lines = [MARKDOWN_SIGNATURE, ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                lines += ["#" * block[1] + " " + markdown_escape(block[2]), ""]
            elif kind == "paragraph":
                lines += [markdown_escape(block[1]), ""]
            elif kind == "table":
                lines.append("| " + " | ".join(markdown_escape(h) for h in block[1]) + " |")
                lines.append("|" + "---|" * len(block[1]))
                lines += ["| " + " | ".join(markdown_escape(cell) for cell in row) + " |" for row in block[2]]
                lines.append("")
            elif kind == "image":
                _write_asset(assets, block[1], block[2])
                target = urllib.parse.quote(f"{assets.name}/{block[1]}")
                lines += [f"![{markdown_escape(block[3])}]({target})", ""]
            elif kind == "code":
                fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", block[2])), default=0))
                lines += [f"<details><summary>{html.escape(block[1])}</summary>", "", fence, block[2].rstrip(),
                          fence, "", "</details>", ""]
        return "\n".join(lines)

    def html(self, title: str) -> str:
        parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'>{HTML_SIGNATURE}<title>{html.escape(title)}"
                 "</title>",
                 "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
                 "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:14px}"
                 "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
                 "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
                 "pre{background:#f7f7f7;padding:1em;overflow:auto}figure{margin:1em 0}</style></head><body>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                parts.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
            elif kind == "paragraph":
                parts.append(f"<p>{html.escape(block[1])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
                body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                               for row in block[2])
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "image":
                data = base64.b64encode(block[2]).decode()
                parts.append(f"<figure><img alt='{html.escape(block[3])}' src='data:image/png;base64,{data}'>"
                             f"<figcaption>{html.escape(block[3])}</figcaption></figure>")
            elif kind == "code":
                parts.append(f"<details><summary>{html.escape(block[1])}</summary>"
                             f"<pre>{html.escape(block[2])}</pre></details>")
        parts.append("</body></html>")
        return "\n".join(parts)


# The first line of every report.md tunelab writes, and a tag in every report.html: a
# report file without it is the user's, and is never replaced.
MARKDOWN_SIGNATURE = "<!-- written by tunelab report -->"
HTML_SIGNATURE = "<meta name='generator' content='tunelab report'>"
ASSETS_MARKER = ".tunelab-report"
# Markdown punctuation; "_" only where it can open or close emphasis (not inside f1_macro).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*{}\[\]()#!|~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


def markdown_escape(text: str) -> str:
    """A value as literal Markdown text: HTML special characters as entities, Markdown
    punctuation backslash-escaped, line breaks as spaces."""
    text = " ".join(str(text).splitlines())
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))
    text = re.sub(r"^(\d+)([.)])(?=\s)", r"\1\\\2", text)  # "1. x" is a list item; "1\. x" is not
    return "\\" + text if text[:1] in ("-", "+", ">", "=") else text


def _write_asset(assets: Path, name: str, data: bytes) -> None:
    from tunelab.runs import atomic_write_bytes

    if not assets.exists():
        atomic_write_bytes(assets / ASSETS_MARKER, b"images of the report beside this folder\n")
    atomic_write_bytes(assets / name, data)


def check_report_target(path: Path, signature: str) -> None:
    """Refuse to replace a report file (or its images folder) that tunelab did not write."""
    from tunelab.errors import TunelabError

    if path.is_symlink():
        raise TunelabError(f"{path} is a symbolic link; tunelab does not write through links (remove it or "
                           "choose another --out)")
    if path.is_dir() and path.suffix != "":
        raise TunelabError(f"{path} is a folder; choose another --out")
    if path.is_file():
        try:
            with open(path, "rb") as handle:
                head = handle.read(4096).decode("utf-8", errors="replace")
        except OSError:
            head = ""
        if signature not in head:
            raise TunelabError(f"{path} exists and was not written by tunelab; it is left as it is (move it or "
                               "choose another --out)")


def check_assets_target(folder: Path) -> None:
    from tunelab.errors import TunelabError

    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise TunelabError(f"{folder} is not a folder tunelab made; it is left as it is (remove it or choose "
                           "another --out)")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / ASSETS_MARKER).is_file():
        raise TunelabError(f"{folder} holds files that tunelab did not write; it is left as it is (move it or "
                           "choose another --out)")


@dataclasses.dataclass
class RunRecord:
    name: str
    path: Path
    metrics: dict
    config: dict
    command_line: str
    history: list

    @property
    def command(self) -> str:
        return self.metrics["command"]

    def identity(self) -> str:
        """The configuration without its seed: runs equal here differ only in seed."""
        config = {k: v for k, v in self.config.items() if k != "seed"}
        return json.dumps(config, sort_keys=True, default=str)


def read_inside(run_dir: Path, name: str) -> bytes | None:
    """A file of a run directory, or None when it is missing, a symbolic link, or resolves
    outside the directory: a report never embeds a file from elsewhere."""
    path = Path(run_dir) / name
    try:
        if path.is_symlink() or not path.is_file():
            return None
        if not path.resolve().is_relative_to(Path(run_dir).resolve()):
            return None
        return path.read_bytes()
    except OSError:
        return None


def _read_text(run_dir: Path, name: str) -> str | None:
    data = read_inside(run_dir, name)
    return data.decode("utf-8", errors="replace") if data is not None else None


def find_runs(paths: list[Path | str]) -> list[RunRecord]:
    """Run directories given directly, or inside study directories (not through
    symbolic links), in order."""
    found = []
    for path in map(Path, paths):
        if (path / "metrics.json").is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p.parent for p in path.glob("*/metrics.json") if not p.parent.is_symlink())
    records = []
    for path in found:
        metrics, config = _read_text(path, "metrics.json"), _read_text(path, "config.yaml")
        if metrics is None or config is None:
            continue
        history, command = _read_text(path, "history.json"), _read_text(path, "command.txt")
        records.append(RunRecord(
            path.name, path, json.loads(metrics), yaml.safe_load(config) or {},
            command.splitlines()[0] if command else "",
            json.loads(history) if history else [],
        ))
    return records


def _fmt(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def wilson_interval(proportion: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion (an accuracy) over n examples. Unlike
    the normal approximation it never shrinks to zero width at 0% or 100%, nor leaves [0, 1]."""
    if n <= 0:
        return float("nan"), float("nan")
    denominator = 1 + z * z / n
    centre = (proportion + z * z / (2 * n)) / denominator
    half = z * math.sqrt(proportion * (1 - proportion) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _wall_seconds(seconds: Mapping[str, float]) -> float:
    """A run's wall time: ``total`` where recorded, else the sum of its phases."""
    if "total" in seconds:
        return float(seconds["total"])
    return float(sum(v for v in seconds.values() if isinstance(v, (int, float))))


def correlation_interval(r: float, n: int, z: float = 1.96, spearman: bool = True) -> tuple[float, float]:
    """A 95% interval of a correlation through Fisher's z; for Spearman's rho with the
    Bonett-Wright standard error sqrt(1 + rho^2 / 2) / sqrt(n - 3)."""
    if n <= 3 or not -1 < r < 1:
        return float("nan"), float("nan")
    se = (math.sqrt(1 + r * r / 2) if spearman else 1.0) / math.sqrt(n - 3)
    centre = math.atanh(r)
    return math.tanh(centre - z * se), math.tanh(centre + z * se)


def _headline_cell(metric: str, value: float, n: int) -> str:
    if metric == "accuracy":
        low, high = wilson_interval(value, n)
    elif metric in ("spearman", "pearson"):
        low, high = correlation_interval(value, n, spearman=metric == "spearman")
    else:
        return f"{value:.4f}"
    return f"{value:.4f} [{low:.4f}, {high:.4f}]"


def _class_distributions(doc: Document, records: list[RunRecord]) -> None:
    """How the examples of each dataset spread over classes (or, for numbers, their range)."""
    seen = set()
    for record in records:
        data = record.metrics.get("data", {})
        counts = data.get("class_counts")
        key = (record.metrics["dataset"], json.dumps(counts, sort_keys=True))
        if not counts or key in seen:
            continue
        seen.add(key)
        doc.heading(3, f"Data: {record.metrics['dataset']}")
        splits = list(counts)
        names = list(next(iter(counts.values())))
        rows = [[name, *[str(counts[s].get(name, 0)) for s in splits]] for name in names[:50]]
        doc.table(["class" if data.get("class_names") else "target", *splits], rows)


def _describe(record: RunRecord) -> str:
    from tunelab.registry import all_tasks

    task = all_tasks().get(record.command)
    if task is None or task.describe is None:
        return ""
    try:
        return task.describe(record.metrics)
    except Exception:  # a report never fails on one run's description
        return ""


def _delta(value: float | None, base: float | None) -> str:
    if value is None or base is None:
        return "—"
    return f"{value - base:+.4f}"


def _main_split(record: RunRecord) -> str:
    splits = record.metrics["splits"]
    return "test" if "test" in splits else next(iter(splits))


def _curves_png(record: RunRecord) -> bytes | None:
    losses = [(h["step"], h["loss"]) for h in record.history if "loss" in h and "step" in h]
    metric = next((m for m in ("accuracy", "f1_micro", "spearman") if any(f"eval_{m}" in h for h in record.history)),
                  "accuracy")
    evals = [(h["step"], h[f"eval_{metric}"]) for h in record.history if f"eval_{metric}" in h]
    if not losses and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
    if losses:
        axes[0].plot(*zip(*losses), color="tab:blue")
    axes[0].set(title="training loss", xlabel="step")
    if evals:
        axes[1].plot(*zip(*evals), marker="o", color="tab:green")
    axes[1].set(title=f"validation {metric.replace('_', ' ')}", xlabel="step")
    fig.suptitle(record.name)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def build_report(records: list[RunRecord], title: str, baseline: str | None = None,
                 outcomes: list | None = None, published: dict | None = None) -> Document:
    doc = Document()
    doc.heading(1, title)
    if records:
        groups = group_runs(records, outcomes)
        _at_a_glance(doc, groups, baseline, published or {})
    env = records[0].metrics.get("environment", {}) if records else {}
    if env:
        doc.paragraph(f"Measured on {env.get('platform', '?')}, device {env.get('device', '?')}; "
                      f"torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}, "
                      f"tunelab {env.get('tunelab', '?')}.")
    if outcomes:
        doc.heading(2, "Steps")
        doc.table(["run", "command", "status", "detail"],
                  [[o.name, o.command, o.status, o.detail or ""] for o in outcomes])
    if not records:
        doc.paragraph("No finished runs to compare.")
        return doc
    _group_sections(doc, groups, baseline)
    base = next((r for r in records if r.name == baseline), None) or \
        next((g.runs[0] for g in groups if g.method == baseline), records[0])
    doc.paragraph(f"Deltas are against {base.name} ({base.command}, {base.metrics['model'] or 'no model'}) on the "
                  "same dataset and split, in each run's headline metric (accuracy, micro F1 for label sets, "
                  "Spearman's rho for numbers). [low, high] is a 95% interval given the number of examples n: "
                  "Wilson's for an accuracy, Fisher's z for a correlation.")
    by_command: dict[str, list[RunRecord]] = {}
    for record in records:
        by_command.setdefault(record.command, []).append(record)
    for command, group in by_command.items():
        doc.heading(2, f"{command}")
        side = [m for m in SIDE_METRICS if any(m in v for r in group for v in r.metrics["splits"].values())]
        rows = []
        for record in group:
            params = record.metrics.get("params", {})
            seconds = record.metrics.get("timing", {}).get("seconds", {})
            throughput = record.metrics.get("timing", {}).get("throughput", {})
            for split, values in record.metrics["splits"].items():
                metric = headline_metric(values)
                base_values = base.metrics["splits"].get(split) \
                    if base.metrics["dataset"] == record.metrics["dataset"] else None
                rows.append([
                    record.name, _describe(record), record.metrics["model"] or "—", record.metrics["dataset"], split,
                    str(values["n"]), metric, _headline_cell(metric, values[metric], values["n"]),
                    _delta(values[metric], base_values.get(metric) if base_values else None),
                    *[_fmt(values.get(m)) for m in side],
                    f"{params.get('trainable', 0):,} / {params.get('total', 0):,}",
                    f"{_wall_seconds(seconds):.1f}",
                    ", ".join(f"{k} {v:.1f}" for k, v in throughput.items() if v is not None),
                ])
        doc.table(["run", "what", "model", "dataset", "split", "n", "metric", "value [95% interval]", "Δ",
                   *[m.replace("_", " ") for m in side], "trained / total params", "seconds", "throughput (/s)"],
                  rows)
        _seed_summary(doc, group)
    _class_distributions(doc, records)
    doc.heading(2, "Training curves")
    drew = False
    for record in records:
        png = _curves_png(record)
        if png:
            doc.image(f"{record.name}-curves.png", png, f"{record.name}: training loss and validation accuracy")
            drew = True
    if not drew:
        doc.paragraph("No training runs.")
    doc.heading(2, "Confusion and predicted-vs-gold")
    for record in records:
        split = _main_split(record)
        picture = read_inside(record.path, f"confusion_{split}.png")
        scatter = read_inside(record.path, f"scatter_{split}.png")
        if picture is not None:
            doc.image(f"{record.name}-confusion-{split}.png", picture, f"{record.name}: {split}")
        elif scatter is not None:
            doc.image(f"{record.name}-scatter-{split}.png", scatter, f"{record.name}: {split}, predicted vs gold")
        elif record.metrics.get("data", {}).get("problem") == "multi-label":
            continue
        else:
            matrix = _read_text(record.path, f"confusion_{split}.json")
            pairs = json.loads(matrix).get("top_confused_pairs", []) if matrix else []
            doc.paragraph(f"{record.name} ({split}): most confused pairs")
            doc.table(["true", "predicted", "count"], [[p["true"], p["predicted"], str(p["count"])] for p in pairs])
    doc.heading(2, "Commands and configurations")
    for record in records:
        config_text = _read_text(record.path, "config.yaml") or ""
        doc.code(f"{record.name}: {record.command_line}", config_text)
    return doc


def _seed_summary(doc: Document, group: list[RunRecord]) -> None:
    """Runs that differ only in seed: mean and spread of accuracy per split."""
    seeds: dict[str, list[RunRecord]] = {}
    for record in group:
        seeds.setdefault(record.identity(), []).append(record)
    rows = []
    for runs in seeds.values():
        if len(runs) < 2:
            continue
        for split in runs[0].metrics["splits"]:
            metric = headline_metric(runs[0].metrics["splits"][split])
            values = [r.metrics["splits"][split][metric] for r in runs if split in r.metrics["splits"]]
            rows.append([", ".join(r.name for r in runs), split, str(len(values)),
                         f"{statistics.mean(values):.4f}", f"{statistics.stdev(values):.4f}"])
    if rows:
        doc.paragraph("Runs that differ only in their seed:")
        doc.table(["runs", "split", "seeds", "mean of the headline metric", "std"], rows)


def write_report(paths: list[Path | str], out: Path | str, title: str = "tunelab report",
                 baseline: str | None = None, outcomes: list | None = None,
                 published: dict | None = None) -> tuple[Path, Path]:
    """Markdown at ``out`` (images in ``<stem>_files/``) and a self-contained HTML beside it."""
    from tunelab.runs import atomic_write_bytes

    out = Path(out)
    if out.suffix.lower() in (".html", ".htm"):
        out = out.with_suffix(".md")
    elif out.suffix.lower() != ".md":
        out = out.with_suffix(".md") if out.suffix else out / "report.md"
    records = find_runs(paths)
    if outcomes is None and len(paths) == 1 and (Path(paths[0]) / "study.json").is_file():
        outcomes, study = _study_state(Path(paths[0]))  # a study directory: its groups and settings
        baseline = baseline or study.get("baseline")
        published = published or study.get("published")
    html_path = out.with_suffix(".html")
    assets = out.parent / f"{out.stem}_files"
    check_report_target(out, MARKDOWN_SIGNATURE)
    check_report_target(html_path, HTML_SIGNATURE)
    check_assets_target(assets)
    doc = build_report(records, title, baseline, outcomes, published)
    atomic_write_bytes(out, doc.markdown(assets).encode("utf-8"))
    atomic_write_bytes(html_path, doc.html(title).encode("utf-8"))
    return out, html_path


# --------------------------------------------------------------------------- study sections


def _study_state(root: Path):
    from types import SimpleNamespace

    state = json.loads(_read_text(root, "study.json") or "{}")
    outcomes = [SimpleNamespace(**{"group": "", "params": {}, "detail": "", "seconds": 0.0, **step})
                for step in state.get("steps", [])]
    return outcomes, state


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _figure(width: float = 7.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=100)


def _group_value(group, split: str | None = None) -> tuple[float, float, float]:
    """(mean, low, high) of a group's headline metric: over seeds, or one run's interval."""
    from tunelab.analysis import seed_summary

    split = split or group.main_split()
    values = group.values(split)
    summary = seed_summary(values)
    if len(values) > 1:
        return summary["mean"], summary["low"], summary["high"]
    metric, run_values = group.metric(), group.runs[0].metrics["splits"][split]
    if metric == "accuracy":
        return (values[0], *wilson_interval(values[0], run_values["n"]))
    if metric in ("spearman", "pearson"):
        return (values[0], *correlation_interval(values[0], run_values["n"], spearman=metric == "spearman"))
    return values[0], float("nan"), float("nan")


def _floor(groups, baseline: str | None):
    """What the others are compared with: the study's baseline step, else the best of the
    steps that need no pretrained model."""
    named = [g for g in groups if g.method == baseline or g.name == baseline]
    pool = named or [g for g in groups if g.command == "baseline"]
    return max(pool, key=lambda g: _group_value(g)[0]) if pool else None


def _at_a_glance(doc: Document, groups: list, baseline: str | None, published: dict) -> None:
    """One chart of every group's headline metric with its interval, and three sentences:
    the best method, what it gained over the floor and the reference recipe, at what cost."""
    if not groups:
        return
    doc.heading(2, "At a glance")
    metric, split = groups[0].metric(), groups[0].main_split()
    comparable = [g for g in groups if g.metric() == metric and split in g.runs[0].metrics["splits"]]
    points = [(g.name, *_group_value(g, split)) for g in comparable]
    fig, ax = _figure(7.5, max(2.0, 0.35 * len(points) + 1))
    for y, (name, mean, low, high) in enumerate(points):
        ax.barh(y, mean, color="tab:blue", alpha=0.6)
        if not math.isnan(low):
            ax.errorbar(mean, y, xerr=[[max(mean - low, 0.0)], [max(high - mean, 0.0)]], color="black", capsize=3)
        reference = (published.get(name) or published.get(next((g.method for g in comparable if g.name == name),
                                                                 ""), {}) or {})
        if isinstance(reference, dict) and split in reference:
            ax.plot(reference[split], y, "r*", markersize=10, label="published" if y == 0 else None)
    ax.set_yticks(range(len(points)), labels=[p[0] for p in points])
    ax.set_xlabel(f"{split} {metric} (bars: mean; lines: 95% interval" + ("; stars: published" if published else "")
                  + ")")
    doc.image("at-a-glance.png", _png(fig), f"{split} {metric} of every method, with its 95% interval")
    best = max(comparable, key=lambda g: _group_value(g, split)[0])
    mean, low, high = _group_value(best, split)
    sentences = [f"The best method is {best.name}: {split} {metric} {mean:.4f}"
                 + ("" if math.isnan(low) else f" [{low:.4f}, {high:.4f}]") + "."]
    floors = [g for g in comparable if g.command == "baseline"]
    floor = max(floors, key=lambda g: _group_value(g, split)[0]) if floors else None
    reference = _floor(comparable, baseline)
    gains = []
    for other, label in ((floor, "the floor"), (reference, "the reference recipe")):
        if other is None or other is best:
            continue
        from tunelab.analysis import paired_comparison

        result = paired_comparison(best, other, split, metric)
        verdict = "" if result is None else (", significant at 0.05" if result["significant"] else ", within noise")
        gains.append(f"{mean - _group_value(other, split)[0]:+.4f} over {label} ({other.name}{verdict})")
    sentences.append(("It gains " + " and ".join(gains) + ".") if gains else
                     "There is no floor or reference step to compare it with (add a baseline step).")
    params = best.runs[0].metrics.get("params", {})
    timing = best.runs[0].metrics.get("timing", {})
    sentences.append(f"It trains {params.get('trainable', 0):,} of {params.get('total', 0):,} parameters, "
                     f"taking {_wall_seconds(timing.get('seconds', {})):.0f} s and "
                     f"{timing.get('peak_rss_mb', 0):.0f} MB of memory per run.")
    doc.paragraph(" ".join(sentences))
    if published:
        rows = []
        for name, values in published.items():
            group = next((g for g in comparable if g.method == name or g.name == name), None)
            for pub_split, value in (values or {}).items():
                ours = _group_value(group, pub_split)[0] if group and pub_split in group.runs[0].metrics["splits"] \
                    else None
                rows.append([name, pub_split, f"{value:.4f}", _fmt(ours)])
        doc.table(["step", "split", "published", "ours"], rows)


def _group_sections(doc: Document, groups: list, baseline: str | None) -> None:
    """Seed groups, paired comparisons, learning curves, cost and calibration."""
    from tunelab.analysis import (
        crossovers,
        describe_comparison,
        learning_curves,
        paired_comparison,
        pareto_front,
        reliability,
        seed_summary,
    )

    seeded = [g for g in groups if len(g.runs) > 1]
    if seeded:
        doc.heading(2, "Seeds")
        doc.paragraph("Runs that differ only in their seed: mean, standard deviation, range and the 95% interval "
                      "of the mean over seeds (Student's t), for every metric of the main split.")
        rows = []
        for group in seeded:
            split = group.main_split()
            for metric in group.runs[0].metrics["splits"][split]:
                if metric in ("n", "classes_present"):
                    continue
                summary = seed_summary(group.values(split, metric))
                rows.append([group.name, split, metric, str(summary["seeds"]), f"{summary['mean']:.4f}",
                             f"{summary['std']:.4f}", f"{summary['min']:.4f} to {summary['max']:.4f}",
                             f"[{summary['low']:.4f}, {summary['high']:.4f}]"])
        doc.table(["group", "split", "metric", "seeds", "mean", "std", "range", "95% interval"], rows)

    floor = _floor(groups, baseline)
    if floor is not None and len(groups) > 1:
        doc.heading(2, "Paired comparisons")
        split, metric = floor.main_split(), floor.metric()
        doc.paragraph(f"Each method against {floor.name} on the same {split} examples: the difference of {metric} "
                      "(averaged over seed pairs), its paired-bootstrap 95% interval, and for accuracy the exact "
                      "McNemar test. A difference is significant at 0.05 when the test rejects (or the interval "
                      "excludes 0); otherwise it is within noise.")
        sentences, rows = [], []
        for group in groups:
            if group is floor or group.metric() != metric:
                continue
            result = paired_comparison(group, floor, split, metric)
            if result is None:
                continue
            sentences.append(describe_comparison(group.name, floor.name, metric, result))
            rows.append([group.name, f"{result['delta']:+.4f}", f"[{result['low']:+.4f}, {result['high']:+.4f}]",
                         f"{result['mcnemar_p']:.3g}" if "mcnemar_p" in result else "—", str(result["n"]),
                         "significant" if result["significant"] else "within noise"])
        if rows:
            doc.table(["method", f"Δ {metric}", "bootstrap 95%", "McNemar p", "n", "at 0.05"], rows)
            for sentence in sentences:
                doc.paragraph(sentence)

    curves = learning_curves(groups)
    if curves:
        doc.heading(2, "Learning curves")
        fig, ax = _figure()
        metric = groups[0].metric()
        for method, points in curves.items():
            xs = [x for x, _ in points]
            ax.plot(xs, [p["mean"] for _, p in points], marker="o", label=method)
            ax.fill_between(xs, [p["min"] for _, p in points], [p["max"] for _, p in points], alpha=0.2)
        ax.set_xscale("log")
        size_key = next(g.size_key for g in groups if g.size_key)
        ax.set_xlabel("shots per class" if size_key == "data.shots" else "training examples")
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
        doc.image("learning-curves.png", _png(fig), f"{metric} against training size (bands: range over seeds)")
        for sentence in crossovers(curves) or ["No method overtakes another over the sizes tried."]:
            doc.paragraph(sentence)

    costed = [g for g in groups if g.values()]
    if len(costed) > 1:
        doc.heading(2, "Cost")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
        metric = costed[0].metric()
        for ax, label, cost in ((axes[0], "wall time per run (s)",
                                 lambda g: np.mean([_wall_seconds(r.metrics["timing"]["seconds"]) for r in g.runs])),
                                (axes[1], "trained parameters",
                                 lambda g: max(g.runs[0].metrics.get("params", {}).get("trainable", 0), 1))):
            points = [(float(cost(g)), _group_value(g)[0]) for g in costed]
            front = pareto_front(points)
            ax.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue")
            ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="tab:red",
                    label="Pareto front")
            for (x, y), group in zip(points, costed):
                ax.annotate(group.name, (x, y), fontsize=6)
            ax.set_xscale("log")
            ax.set(xlabel=label, ylabel=metric)
            ax.legend(fontsize=7)
        doc.image("cost.png", _png(fig), f"{metric} against wall time and trained parameters (red: Pareto front)")
        rows = [[g.name, f"{np.mean([_wall_seconds(r.metrics['timing']['seconds']) for r in g.runs]):.1f}",
                 f"{g.runs[0].metrics['timing'].get('peak_rss_mb', 0):.0f}",
                 _fmt(g.runs[0].metrics["timing"].get("peak_cuda_mb"), 0),
                 f"{g.runs[0].metrics.get('params', {}).get('trainable', 0):,}"] for g in costed]
        doc.table(["group", "seconds per run", "peak RSS MB", "peak CUDA MB", "trained params"], rows)

    calibrated = [g for g in groups if "ece" in g.runs[0].metrics["splits"].get(g.main_split(), {})]
    uncalibrated = [g.name for g in groups if g.metric() == "accuracy" and g not in calibrated]
    if calibrated:
        doc.heading(2, "Calibration")
        doc.paragraph("Expected calibration error (15 bins) of runs that give probabilities"
                      + (f"; {', '.join(uncalibrated)} give scores without probabilities (e.g. an SVC's decision "
                         "values), so no calibration is measured for them." if uncalibrated else "."))
        doc.table(["group", "split", "ECE (mean over seeds)"],
                  [[g.name, g.main_split(), f"{np.mean(g.values(metric='ece')):.4f}"] for g in calibrated])
        fig, ax = _figure(4.5, 4.5)
        for group in calibrated[:8]:
            curve = reliability(group.runs[0].path, group.main_split())
            if curve is not None:
                centres, accuracy, counts = curve
                ax.plot(centres[counts > 0], accuracy[counts > 0], marker="o", label=group.name)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=1)
        ax.set(xlabel="confidence", ylabel="accuracy", title="reliability")
        ax.legend(fontsize=7)
        doc.image("reliability.png", _png(fig), "reliability diagram: accuracy against confidence")
