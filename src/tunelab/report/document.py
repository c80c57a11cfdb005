"""Human-readable summaries of runs."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import logging
import math
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tunelab.analysis.comparisons import (
    Claim,
    Family,
    Group,
    RunRecord,
    choose_best,
    compare,
    correct,
    crossover_candidates,
    families,
    find_floor,
    find_runs,
    group_runs,
    group_summary,
    learning_curves,
    pareto_front,
    pareto_optimal,
    reliability,
    zero_label_references,
)
from tunelab.core.errors import TunelabError, counted
from tunelab.core.files import is_plain_name
from tunelab.core.plots import figure, png
from tunelab.core.registry import all_tasks
from tunelab.core.runs import atomic_write_bytes, read_inside, read_text_inside
from tunelab.core.stats import PairedTest, better, correlation_interval, seed_summary, wilson_interval
from tunelab.problems.metrics import LOWER_IS_BETTER, below_majority, headline_metric

SEED_METRICS = ("accuracy", "f1_macro", "balanced_accuracy", "top5_accuracy", "ece", "f1_micro", "f1_samples",
                "subset_accuracy", "mean_average_precision", "spearman", "pearson", "mse")
# Beside each run's headline metric, the comparison tables show these where present.
SIDE_METRICS = ("f1", "f1_macro", "balanced_accuracy", "top5_accuracy", "mean_average_precision", "subset_accuracy",
                "pearson", "mse", "mae")


# --------------------------------------------------------------------------- comparison reports


class Document:
    """A report as blocks, rendered to Markdown (images beside it) and to one
    self-contained HTML page (images embedded)."""

    def __init__(self):
        self.blocks: list[tuple] = []
        self.summary: list[str] = []  # the headline sentences, for the console

    def heading(self, level: int, text: str):
        self.blocks.append(("heading", level, text))

    def paragraph(self, text: str):
        self.blocks.append(("paragraph", text))

    def table(self, header: list[str], rows: list[list[str]]):
        self.blocks.append(("table", header, rows))

    def image(self, name: str, png: bytes, caption: str):
        """An image; its file name is made one plain path component here, whatever run,
        split or step names it was built from (they come from files a user can edit)."""
        stem, _, suffix = name.rpartition(".")
        safe = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")[:80] or "image"
        taken = {block[1] for block in self.blocks if block[0] == "image"}
        candidate, number = f"{safe}.{suffix}", 1
        while candidate in taken:
            number += 1
            candidate = f"{safe}-{number}.{suffix}"
        self.blocks.append(("image", candidate, png, caption))

    def code(self, summary: str, text: str):
        self.blocks.append(("code", summary, text))

    def contents(self) -> list[str]:
        """The section headings, for a table of contents."""
        return [block[2] for block in self.blocks if block[0] == "heading" and block[1] == 2]

    def markdown(self, assets: Path) -> str:
        """Markdown with every value escaped (names from the data or the user never become
        markup or HTML); images are written into ``assets``, a folder tunelab owns."""
        lines = [MARKDOWN_SIGNATURE, ""]
        contents = self.contents()
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                lines += ["#" * block[1] + " " + markdown_escape(block[2]), ""]
                if block[1] == 1 and contents:
                    lines += ["Contents: " + " · ".join(f"[{markdown_escape(name, False)}](#{_slug(name)})"
                                                        for name in contents), ""]
            elif kind == "paragraph":
                lines += [markdown_escape(block[1]), ""]
            elif kind == "table":
                lines.append("| " + " | ".join(markdown_escape(h, False) for h in block[1]) + " |")
                lines.append("|" + "---|" * len(block[1]))
                lines += ["| " + " | ".join(markdown_escape(cell, False) for cell in row) + " |" for row in block[2]]
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
                 "pre{background:#f7f7f7;padding:1em;overflow:auto}figure{margin:1em 0}"
                 ".wide{overflow-x:auto}nav{background:#f7f7f7;padding:.5em 1em;margin:1em 0}"
                 "nav li{display:inline;margin-right:1.2em}nav ul{padding:0;margin:.3em 0}</style></head><body>"]
        contents = self.contents()
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                anchor = f" id='{_slug(block[2])}'" if block[1] == 2 else ""
                parts.append(f"<h{block[1]}{anchor}>{html.escape(block[2])}</h{block[1]}>")
                if block[1] == 1 and contents:
                    parts.append("<nav><strong>Contents</strong><ul>" + "".join(
                        f"<li><a href='#{_slug(name)}'>{html.escape(name)}</a></li>" for name in contents)
                        + "</ul></nav>")
            elif kind == "paragraph":
                parts.append(f"<p>{html.escape(block[1])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
                body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                               for row in block[2])
                parts.append(f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                             "</div>")
            elif kind == "image":
                data = base64.b64encode(block[2]).decode()
                parts.append(f"<figure><img alt='{html.escape(block[3])}' src='data:image/png;base64,{data}'>"
                             f"<figcaption>{html.escape(block[3])}</figcaption></figure>")
            elif kind == "code":
                parts.append(f"<details><summary>{html.escape(block[1])}</summary>"
                             f"<pre>{html.escape(block[2])}</pre></details>")
        parts.append("</body></html>")
        return "\n".join(parts)


logger = logging.getLogger(__name__)

# The first line of every report.md tunelab writes, and a tag in every report.html: a
# report file without it is the user's, and is never replaced.
MARKDOWN_SIGNATURE = "<!-- written by tunelab report -->"
HTML_SIGNATURE = "<meta name='generator' content='tunelab report'>"
ASSETS_MARKER = ".tunelab-report"
# Markdown punctuation that can start markup anywhere in a line; "_" only where it can
# open or close emphasis (not inside f1_macro). Brackets stay readable ("[0.70, 0.75]"):
# what would make them a link or image ("](", "][", "]:") is broken up instead.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*|~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|(?<=\])[(\[:])")


def _slug(text: str) -> str:
    """A heading's anchor, as GitHub and most Markdown viewers make it."""
    return re.sub(r"[^a-z0-9 -]", "", text.lower()).strip().replace(" ", "-")


def markdown_escape(text: str, line_start: bool = True) -> str:
    """A value as literal Markdown text: HTML special characters as entities, Markdown
    punctuation backslash-escaped, line breaks as spaces; with ``line_start`` also what
    only starts a block there (a list item, a heading, a quote)."""
    text = " ".join(str(text).splitlines())
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))
    if not line_start:
        return text
    text = re.sub(r"^(\d+)([.)])(?=\s)", r"\1\\\2", text)  # "1. x" is a list item; "1\. x" is not
    return "\\" + text if text[:1] in ("-", "+", ">", "=", "#", "[") else text


def _write_asset(assets: Path, name: str, data: bytes) -> None:
    if not is_plain_name(name):  # Document.image makes every name plain: this guards the rule
        raise TunelabError(f"the report's image name {name!r} is not a plain file name; nothing was written")
    if not assets.exists():
        atomic_write_bytes(assets / ASSETS_MARKER, b"images of the report beside this folder\n")
    atomic_write_bytes(assets / name, data)


def check_report_target(path: Path, signature: str) -> None:
    """Refuse to replace a report file (or its images folder) that tunelab did not write."""
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
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise TunelabError(f"{folder} is not a folder tunelab made; it is left as it is (remove it or choose "
                           "another --out)")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / ASSETS_MARKER).is_file():
        raise TunelabError(f"{folder} holds files that tunelab did not write; it is left as it is (move it or "
                           "choose another --out)")


def _fmt(value, digits: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _wall_seconds(seconds: Mapping[str, float]) -> float:
    """A run's wall time: ``total`` where recorded, else the sum of its phases."""
    if "total" in seconds:
        return float(seconds["total"])
    return float(sum(v for v in seconds.values() if isinstance(v, (int, float))))


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
    task = all_tasks().get(record.command)
    if task is None or task.describe is None:
        return ""
    try:
        return task.describe(record.metrics)
    except Exception:  # a report never fails on one run's description
        return ""


def _main_split(record: RunRecord) -> str:
    splits = record.metrics["splits"]
    return "test" if "test" in splits else next(iter(splits))


def _training_curves_png(records: list[RunRecord]) -> bytes | None:
    """Every training run's loss and validation metric against the step, overlaid, the
    best checkpoint of each marked with a star."""
    curves = []
    for record in records:
        losses = [(h["step"], h["loss"]) for h in record.history if "loss" in h and "step" in h]
        metric = next((m for m in ("accuracy", "f1_micro", "spearman", "mean_average_precision")
                       if any(f"eval_{m}" in h for h in record.history)), None)
        evals = [(h["step"], h[f"eval_{metric}"]) for h in record.history if metric and f"eval_{metric}" in h]
        if losses or evals:
            best = str(record.metrics.get("task", {}).get("training", {}).get("best_checkpoint") or "")
            found = re.search(r"checkpoint-(\d+)", best)
            curves.append((record.name, losses, evals, metric, int(found.group(1)) if found else None))
    if not curves:
        return None
    fig, axes = figure(10, 3.6, columns=2)
    for index, (name, losses, evals, _, best) in enumerate(curves):
        colour = f"C{index % 10}"
        if losses:
            axes[0].plot(*zip(*losses), color=colour, label=name, linewidth=1.2)
        if evals:
            axes[1].plot(*zip(*evals), marker="o", markersize=3, color=colour, label=name)
            at_best = [(s, v) for s, v in evals if s == best]
            if at_best:
                axes[1].plot(*at_best[0], marker="*", markersize=13, color=colour, markeredgecolor="black")
    axes[0].set(title="training loss", xlabel="step")
    metrics = sorted({c[3] for c in curves if c[3]})
    axes[1].set(title="validation " + " / ".join(m.replace("_", " ") for m in metrics) + " (star: best checkpoint)",
                xlabel="step")
    if len(curves) <= 12:
        (axes[0] if any(c[1] for c in curves) else axes[1]).legend(fontsize=7)
    return png(fig)


def _confusion_grid_png(records: list[RunRecord]) -> bytes | None:
    """The confusion matrices of runs with up to 30 classes side by side, each row
    normalised to the share of its true class, on one shared colour scale, titled by run."""
    import numpy as np

    panels = []
    for record in records:
        split = _main_split(record)
        text = read_text_inside(record.path, f"confusion_{split}.json")
        try:
            payload = json.loads(text) if text else None
            matrix = np.asarray(payload["matrix"], dtype=float) if payload else None
            labels = [str(x) for x in payload["labels"]] if payload else []
        except (ValueError, KeyError, TypeError):
            continue
        if matrix is None or matrix.ndim != 2 or not 1 < len(labels) <= 30 or matrix.shape[0] != len(labels):
            continue
        shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
        panels.append((f"{record.name} ({split})", shares, labels))
    if not panels:
        return None
    panels = panels[:12]
    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    size = 3.4 if max(len(p[2]) for p in panels) <= 10 else 4.6
    fig, axes = figure(size * columns + 1, size * rows + 0.4 * rows, columns=columns, rows=rows, squeeze=False,
                       layout="constrained")
    image = None
    for ax, (title, shares, labels) in zip(axes.flat, panels):
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        ticks = range(len(labels))
        ax.set_xticks(ticks, labels=labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(ticks, labels=labels, fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        if len(labels) <= 10:
            for (t, p), share in np.ndenumerate(shares):
                ax.text(p, t, f"{share:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if share > 0.5 else "black")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, fraction=0.025, pad=0.02, label="share of the true class")
    return png(fig)


# --------------------------------------------------------------------------- the comparison report


@dataclasses.dataclass
class Findings:
    """What a report concludes, decided once and then rendered: per family of comparable
    groups its floor, its chosen method, and every tested claim (Holm-corrected together)."""

    families: list[Family]
    floors: dict[int, tuple[Group | None, str]]  # id(family) -> (floor, how it is defined)
    chosen: dict[int, tuple[Group | None, str, Group | None]]  # id(family) -> (best, split that chose, runner-up)
    claims: list[Claim]

    def claim(self, a: Group, b: Group, purpose: str) -> Claim | None:
        return next((c for c in self.claims if c.a is a and c.b is b and c.purpose == purpose), None)

    def family_of(self, group: Group) -> Family | None:
        return next((f for f in self.families if any(g is group for g in f.groups)), None)


def find_findings(groups: list[Group], baseline: str | None) -> Findings:
    fams = families(groups)
    floors, chosen, claims, read = {}, {}, [], {}  # read: prediction files parsed once for the whole report
    for family in fams:
        floor, how = find_floor(family, baseline)
        floors[id(family)] = (floor, how)
        best, split = choose_best(family.groups, family.metric)
        runner = None
        if best is not None:
            rest = [g for g in family.groups if g is not best and g.values(split, family.metric)]
            runner, _ = choose_best(rest, family.metric) if rest else (None, split)
        chosen[id(family)] = (best, split, runner)
        if floor is not None:
            for group in family.groups:
                if group is not floor:
                    claims.append(Claim(group, floor, family.split, family.metric, "floor",
                                        compare(group, floor, family.split, family.metric, read)))
        if best is not None and runner is not None:
            claims.append(Claim(best, runner, family.split, family.metric, "runner-up",
                                compare(best, runner, family.split, family.metric, read)))
        members = {id(g) for g in family.groups}
        curves = {m: [(x, g) for x, g in points if id(g) in members]
                  for m, points in learning_curves(family.groups).items()}
        for ahead, behind, size, previous in crossover_candidates({m: p for m, p in curves.items() if p}):
            claim = Claim(ahead, behind, family.split, family.metric, "crossover",
                          compare(ahead, behind, family.split, family.metric, read))
            claim.size, claim.previous = size, previous  # type: ignore[attr-defined]
            claims.append(claim)
        # Every size of every curve against each zero-shot reference: where a method
        # overtakes zero-shot is the smallest size whose test holds after correction.
        for reference in zero_label_references(family.groups):
            for points in curves.values():
                for size, group in points:
                    if not group.runs[0].metrics.get("model"):
                        continue  # a floor (no pretrained model) is not a method zero-shot is measured against
                    claim = Claim(group, reference, family.split, family.metric, "zero-shot",
                                  compare(group, reference, family.split, family.metric, read))
                    claim.size = size  # type: ignore[attr-defined]
                    claims.append(claim)
    correct(claims)
    return Findings(fams, floors, chosen, claims)


def _zero_shot_lines(doc: Document, findings: Findings, curves: dict) -> None:
    """Where each learning curve overtakes each zero-shot reference: the smallest size at
    which it is ahead and the paired test holds after Holm's correction."""
    against = [c for c in findings.claims if c.purpose == "zero-shot"]
    for reference in {id(c.b): c.b for c in against}.values():
        level = seed_summary(reference.values(), reference.metric())["mean"]
        doc.paragraph(f"{reference.method} learns from no label: {reference.metric()} {level:.4f}, drawn as the "
                      "dashed line at 0 labels.")
        for method in curves:
            claims = sorted((c for c in against if c.b is reference and c.a.method == method),
                            key=lambda c: c.size)  # type: ignore[attr-defined]
            if not claims:
                continue
            ahead = [c for c in claims if isinstance(c.result, PairedTest) and c.result.significant
                     and better(c.metric, c.result.delta, 0.0)]
            if ahead:
                first = ahead[0]
                doc.paragraph(f"{method} overtakes {reference.method} at {first.size:g} "  # type: ignore[attr-defined]
                              f"({first.result.delta:+.4f}, {_verdict(first.result)}).")
            else:
                doc.paragraph(f"{method} does not overtake {reference.method} at any size tried (no difference "
                              "in its favour holds after correction).")


def _verdict(result: PairedTest | str) -> str:
    if isinstance(result, str):
        return f"not tested ({result})"
    p = result.p_adjusted if result.p_adjusted is not None else result.p
    return (f"{'significant' if result.significant else 'within noise'} (Holm-adjusted p = {p:.3g}, "
            f"n = {result.n}, {result.seed_pairs} seed pair{'s' if result.seed_pairs != 1 else ''})")


def build_report(records: list[RunRecord], title: str, baseline: str | None = None,
                 outcomes: list | None = None, published: dict | None = None,
                 problems: list[str] | None = None, searches: list[dict] | None = None) -> Document:
    doc = Document()
    doc.heading(1, title)
    groups = group_runs(records, outcomes) if records else []
    findings = find_findings(groups, baseline)
    if records:
        _at_a_glance(doc, findings, published or {})
    env = records[0].metrics.get("environment", {}) if records else {}
    if env:
        doc.paragraph(f"Measured on {env.get('platform', '?')}, device {env.get('device', '?')}; "
                      f"torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}, "
                      f"tunelab {env.get('tunelab', '?')}.")
    if outcomes:
        doc.heading(2, "Steps")
        doc.table(["run", "command", "status", "detail"],
                  [[o.name, o.command, o.status, o.detail or ""] for o in outcomes])
    for search in searches or []:
        _search_section(doc, search)
    for problem in problems or []:
        doc.paragraph(f"Left out of this report: {problem}.")
    if not records:
        doc.paragraph("No finished runs to compare.")
        return doc
    _group_sections(doc, groups, findings)
    _run_tables(doc, records, groups, findings)
    _class_distributions(doc, records)
    doc.heading(2, "Training curves")
    png = _training_curves_png(records)
    if png:
        doc.image("training-curves.png", png, "training loss and validation metric of every training run, by step "
                  "(stars: the best checkpoint, the one kept)")
    else:
        doc.paragraph("No training runs.")
    doc.heading(2, "Confusion and predicted-vs-gold")
    grid = _confusion_grid_png(records)
    if grid:
        doc.image("confusion.png", grid, "confusion matrices (rows: true class, as shares of it; one colour scale)")
    for record in records:
        split = _main_split(record)
        scatter = read_inside(record.path, f"scatter_{split}.png")
        if read_inside(record.path, f"confusion_{split}.png") is not None:
            continue  # in the grid above
        if scatter is not None:
            doc.image(f"{record.name}-scatter-{split}.png", scatter, f"{record.name}: {split}, predicted vs gold")
        elif read_inside(record.path, f"confusion_{split}.json") is None:
            continue  # label sets have no confusion matrix
        else:
            matrix = read_text_inside(record.path, f"confusion_{split}.json")
            try:
                pairs = json.loads(matrix).get("top_confused_pairs", []) if matrix else []
            except (ValueError, AttributeError):
                pairs = []
            doc.paragraph(f"{record.name} ({split}): most confused pairs")
            doc.table(["true", "predicted", "count"], [[str(p.get("true")), str(p.get("predicted")),
                                                        str(p.get("count"))] for p in pairs if isinstance(p, dict)])
    doc.heading(2, "Commands and configurations")
    for record in records:
        config_text = read_text_inside(record.path, "config.yaml") or ""
        doc.code(f"{record.name}: {record.command_line}", config_text)
    return doc


def _run_tables(doc: Document, records: list[RunRecord], groups: list[Group], findings: Findings) -> None:
    """One table per command: every run's splits, its headline metric with its interval,
    and the difference to its family's floor (only runs scored on the floor's examples)."""
    floor_of: dict[str, Group] = {}
    for family in findings.families:
        floor = findings.floors[id(family)][0]
        if floor is not None:
            floor_of.setdefault(floor.data_identity(), floor)
    doc.paragraph("Δ is each run's headline metric (accuracy, micro F1 for label sets, Spearman's rho for numbers) "
                  "minus the floor's mean on the same split, only for runs scored on the floor's examples. "
                  "[low, high] is a 95% interval given the number of examples n: Wilson's for an accuracy, "
                  "Fisher's z for a correlation.")
    by_command: dict[str, list[RunRecord]] = {}
    for record in records:
        by_command.setdefault(record.command, []).append(record)
    for command, members in by_command.items():
        doc.heading(2, f"{command}")
        side = [m for m in SIDE_METRICS if any(m in v for r in members for v in r.metrics["splits"].values())]
        rows = []
        for record in members:
            floor = floor_of.get(record.data_identity())
            for split, values in record.metrics["splits"].items():
                metric = headline_metric(values)
                base = floor.mean(split) if floor is not None and floor.values(split, metric) else None
                seen = record.labels_seen()
                rows.append([
                    record.name, _describe(record), record.metrics["model"] or "—", record.metrics["dataset"], split,
                    str(values["n"]), metric, _headline_cell(metric, values[metric], values["n"]),
                    "—" if base is None else f"{values[metric] - base:+.4f}",
                    *[_fmt(values.get(m)) for m in side], "—" if seen is None else f"{seen:,}",
                ])
        for record in members:
            for warning in below_majority(record.metrics):
                doc.paragraph(f"Warning, {record.name}: {warning}.")
        doc.table(["run", "what", "model", "dataset", "split", "n", "metric", "value [95% interval]", "Δ floor",
                   *[m.replace("_", " ") for m in side], "labels seen"], rows)


def write_report(paths: list[Path | str], out: Path | str, title: str = "tunelab report",
                 baseline: str | None = None, outcomes: list | None = None,
                 published: dict | None = None, searches: list[dict] | None = None) -> tuple[Path, Path]:
    """Markdown at ``out`` (images in ``<stem>_files/``) and a self-contained HTML beside it.
    A report file or images folder that tunelab did not write is never replaced."""
    out = Path(out)
    if out.suffix.lower() in (".html", ".htm"):
        out = out.with_suffix(".md")
    elif out.suffix.lower() != ".md":
        out = out.with_suffix(".md") if out.suffix else out / "report.md"
    html_path = out.with_suffix(".html")
    assets = out.parent / f"{out.stem}_files"
    check_report_target(out, MARKDOWN_SIGNATURE)
    check_report_target(html_path, HTML_SIGNATURE)
    check_assets_target(assets)
    problems: list[str] = []
    records = find_runs(paths, problems)
    if outcomes is None and len(paths) == 1 and (Path(paths[0]) / "study.json").is_file():
        outcomes, study = _study_state(Path(paths[0]))  # a study directory: its groups and settings
        baseline = baseline or study.get("baseline")
        published = published or study.get("published")
        searches = searches or _search_records(Path(paths[0]), problems)
        # A search's trials scored validation only: compare its best run.
        records = [r for r in records if not any(o.name == r.name and getattr(o, "trial", False)
                                                 for o in outcomes)]
    doc = build_report(records, title, baseline, outcomes, published, problems, searches)
    atomic_write_bytes(out, doc.markdown(assets).encode("utf-8"), own_folder=False)
    atomic_write_bytes(html_path, doc.html(title).encode("utf-8"), own_folder=False)
    for sentence in doc.summary:
        logger.info("%s", sentence)
    return out, html_path


# --------------------------------------------------------------------------- study sections


def _search_records(root: Path, problems: list[str]) -> list[dict]:
    """The searches of a study directory; one whose file is damaged, or whose step name
    is not a plain name (it becomes part of file names), is left out and said."""
    records = []
    for path in sorted(root.glob("*.search.json")):
        try:
            record = json.loads(read_text_inside(root, path.name) or "{}")
        except ValueError:
            problems.append(f"{path.name}: left out (not valid JSON)")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("trials"), list):
            problems.append(f"{path.name}: left out (it holds no list of trials)")
        elif not is_plain_name(record.get("step")) or path.name != f"{record['step']}.search.json":
            problems.append(f"{path.name}: left out (its step name {str(record.get('step'))[:60]!r} is not the "
                            "plain name its file is named by)")
        else:
            records.append(record)
    return records


def _search_section(doc: Document, search: dict) -> None:
    """One searched step: how many trials ran, were pruned and failed; the optimisation
    history; Optuna's parameter importances; every trial; the best configuration (chosen
    on validation) as YAML to copy. Only the best configuration's run scored test."""
    import yaml

    step, spec = search.get("step", "?"), search.get("spec", {})
    doc.heading(2, f"Search: {step}")
    if "error" in search:
        doc.paragraph(f"The search stopped: {search['error']}.")
        return
    counts = search.get("counts", {})
    metric = spec.get("metric", "validation.accuracy")
    doc.paragraph(f"{counted(len(search['trials']), 'trial')} ({counts.get('complete', 0)} complete, "
                  f"{counts.get('pruned', 0)} pruned, {counts.get('fail', 0)} failed or interrupted) over "
                  f"{', '.join(spec.get('space', {}))}; "
                  f"sampler {spec.get('sampler')}, pruner {spec.get('pruner')}, seed {spec.get('seed')}; trials "
                  f"scored {metric} only. The comparisons above use {step}-best: the best trial's configuration, "
                  "run once more on every split.")
    values = [(t["number"], t["value"], t["state"]) for t in search["trials"] if t.get("value") is not None]
    if values:
        fig, ax = figure()
        lower = metric.rsplit(".", 1)[-1] in LOWER_IS_BETTER
        best, running = [], None
        for _, value, _ in values:
            running = value if running is None else (min(running, value) if lower else max(running, value))
            best.append(running)
        ax.plot([n for n, _, _ in values], [v for _, v, _ in values], "o", label="trial")
        ax.step([n for n, _, _ in values], best, where="post", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
        doc.image(f"search-{step}.png", png(fig), f"{metric} of every completed trial, and the best so far")
    if search.get("importances"):
        doc.table(["setting", "importance (Optuna, fANOVA)"],
                  [[k, f"{v:.3f}"] for k, v in sorted(search["importances"].items(), key=lambda kv: -kv[1])])
    rows = []
    for t in search["trials"]:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        value = f"{t['value']:.4f}" if isinstance(t.get("value"), (int, float)) else ""
        rows.append([str(t["number"]), t.get("run") or "", t["state"], value, params, t.get("note", "")])
    doc.table(["trial", "run", "state", metric, "settings", "note"], rows)
    best = search.get("best")
    if best:
        nested: dict = {}
        for key, value in best["params"].items():
            node = nested
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        doc.paragraph(f"Best: trial {best['trial']} ({best['chosen_on']} {best['value']:.4f}); its settings, to "
                      "copy into a step:")
        doc.code(f"best settings of {step}", yaml.safe_dump(nested, sort_keys=False))


def _study_state(root: Path):
    from types import SimpleNamespace

    try:
        state = json.loads(read_text_inside(root, "study.json") or "{}")
    except ValueError:
        state = {}
    steps = state.get("steps", []) if isinstance(state, dict) else []
    outcomes = [SimpleNamespace(**{"group": "", "params": {}, "detail": "", "seconds": 0.0, **step})
                for step in steps if isinstance(step, dict) and is_plain_name(step.get("name"))
                and is_plain_name(step.get("group") or step["name"])]
    return outcomes, state if isinstance(state, dict) else {}


def _published_value(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _at_a_glance(doc: Document, findings: Findings, published: dict) -> None:
    """Per family of comparable runs: one chart of every group's headline metric with its
    interval, and what can be said: the method chosen on validation and its test score,
    whether it is distinguishable from the runner-up and from the floor (seed-aware
    tests, Holm-corrected over the whole report), at what cost."""
    if not findings.families:
        return
    doc.heading(2, "At a glance")
    tested = [c for c in findings.claims if isinstance(c.result, PairedTest)]
    if tested:
        doc.paragraph(f"Every \"significant\" below comes from a paired test on the same examples that counts seeds "
                      f"as well as examples as chance, with Holm's correction over all {len(tested)} comparisons of "
                      "this report at 0.05.")
    for index, family in enumerate(findings.families):
        split, metric = family.split, family.metric
        if len(findings.families) > 1:
            doc.heading(3, f"{family.dataset}: {split} {metric}")
        points = sorted(((g, *group_summary(g, split)) for g in family.groups), key=lambda p: p[1])
        fig, ax = figure(7.5, max(2.0, 0.35 * len(points) + 1))
        for y, (group, mean, low, high) in enumerate(points):
            ax.barh(y, mean, color="tab:blue", alpha=0.6)
            if not math.isnan(low):
                ax.errorbar(mean, y, xerr=[[max(mean - low, 0.0)], [max(high - mean, 0.0)]], color="black",
                            capsize=3)
            reference = published.get(group.name) or published.get(group.method) or {}
            star = _published_value(reference.get(split)) if isinstance(reference, dict) else None
            if star is not None:
                ax.plot(star, y, "r*", markersize=10, label="published" if y == 0 else None)
            right = max(v for v in (mean, high, star) if v is not None and not math.isnan(v))
            ax.annotate(f"{mean:.4f}", (right, y), xytext=(6, 0), textcoords="offset points", va="center",
                        fontsize=8)
        ax.margins(x=0.12)
        ax.set_yticks(range(len(points)), labels=[p[0].name for p in points])
        ax.set_xlabel(f"{split} {metric} (bars: mean; lines: 95% interval" + ("; stars: published" if published
                                                                               else "") + ")")
        doc.image(f"at-a-glance-{index + 1}.png" if index else "at-a-glance.png", png(fig),
                  f"{split} {metric} of every method on {family.dataset}, with its 95% interval")
        sentences = _glance_sentences(findings, family)
        doc.paragraph(" ".join(sentences))
        doc.summary.append(sentences[0])
    if published:
        rows = []
        for name, values in published.items():
            group = next((g for f in findings.families for g in f.groups if g.method == name or g.name == name), None)
            for pub_split, value in (values.items() if isinstance(values, dict) else []):
                number = _published_value(value)
                ours = group.mean(pub_split) if group and group.values(pub_split) else None
                rows.append([name, str(pub_split), _fmt(number) if number is not None else str(value), _fmt(ours),
                             group.runs[0].metrics.get("model") or "—" if group else "—"])
        doc.paragraph("Published numbers come from the paper's own setup; where our step uses another model "
                      "(the model column), they are context, not a like-for-like comparison.")
        doc.table(["step", "split", "published", "ours", "our model"], rows)


def _glance_sentences(findings: Findings, family: Family) -> list[str]:
    split, metric = family.split, family.metric
    best, chose_on, runner = findings.chosen[id(family)]
    floor, floor_how = findings.floors[id(family)]
    if best is None:
        return ["No run has a score to compare."]
    mean, low, high = group_summary(best, split)
    interval = "" if math.isnan(low) else f" [{low:.4f}, {high:.4f}]"
    weak = " (an interval from two seeds is wide and rough)" if len(best.values(split)) == 2 else ""
    if chose_on == split:
        sentences = [f"Chosen on {split} (no validation split): {best.name}, {split} {metric} {mean:.4f}{interval}"
                     f"{weak}; chosen and scored on the same split, this number is optimistic."]
    else:
        sentences = [f"Chosen on {chose_on}: {best.name} (highest {chose_on} {metric}, "
                     f"{np.mean(best.values(chose_on)):.4f}); on {split} it scores {mean:.4f}{interval}{weak}."]
    if runner is not None:
        claim = findings.claim(best, runner, "runner-up")
        result = claim.result if claim else "not tested"
        if isinstance(result, PairedTest) and result.significant:
            sentences.append(f"Its lead over the runner-up {runner.name} on {split} ({result.delta:+.4f}) is "
                             f"{_verdict(result)}.")
        else:
            sentences.append(f"The runner-up {runner.name} is not separated from it on {split}: "
                             f"{_verdict(result)}.")
    if floor is not None and floor is not best:
        claim = findings.claim(best, floor, "floor")
        if claim is not None:
            delta = f"{claim.result.delta:+.4f} " if isinstance(claim.result, PairedTest) else ""
            sentences.append(f"Against the floor {floor.name} ({floor_how}): {delta}{_verdict(claim.result)}.")
    elif floor is None:
        sentences.append("There is no floor to compare it with (add a baseline step).")
    params = best.runs[0].metrics.get("params", {})
    timing = best.runs[0].metrics.get("timing", {})
    seen = best.labels_seen()
    sentences.append(f"It trains {params.get('trainable', 0):,} of {params.get('total', 0):,} parameters, "
                     f"taking {_wall_seconds(timing.get('seconds', {})) / 60:.1f} min and "
                     f"{timing.get('peak_rss_mb', 0):.0f} MB of memory per run"
                     + (f", and saw {seen:,} labelled examples (train and validation)." if seen is not None else "."))
    return sentences


def _group_sections(doc: Document, groups: list[Group], findings: Findings) -> None:
    """Seed groups, paired comparisons, learning curves, cost and calibration."""
    seeded = [g for g in groups if len(g.runs) > 1]
    if seeded:
        doc.heading(2, "Seeds")
        doc.paragraph("Runs that differ only in their seed: mean, standard deviation, range and the 95% interval "
                      "of the mean over seeds (Student's t, clipped to the metric's range), for the metrics of "
                      "the main split.")
        rows = []
        for group in seeded:
            split = group.main_split()
            classes = len(group.runs[0].metrics.get("data", {}).get("class_names", []))
            for metric in group.runs[0].metrics["splits"][split]:
                if metric not in SEED_METRICS or (metric == "top5_accuracy" and classes <= 10):
                    continue
                summary = seed_summary(group.values(split, metric), metric)
                rows.append([group.name, split, metric, str(summary["seeds"]), f"{summary['mean']:.4f}",
                             f"{summary['std']:.4f}", f"{summary['min']:.4f} to {summary['max']:.4f}",
                             f"[{summary['low']:.4f}, {summary['high']:.4f}]"])
        doc.table(["group", "split", "metric", "seeds", "mean", "std", "range", "95% interval"], rows)

    floor_claims = [c for c in findings.claims if c.purpose == "floor"]
    if floor_claims:
        doc.heading(2, "Paired comparisons")
        methods = sorted({c.result.method for c in floor_claims if isinstance(c.result, PairedTest)})
        doc.paragraph("Each method against its floor on the same examples: the difference of the headline metric "
                      "(mean over seed pairs; seeds paired by value, a single-run floor paired with every seed), "
                      "its 95% bootstrap interval (seed pairs and examples resampled together), the seed-aware "
                      "p-value and the same after Holm's correction over every comparison in this report, and each "
                      "seed pair's own difference and p-value. Tests used: " + "; ".join(methods or ["none"]) + ".")
        rows = []
        for claim in floor_claims:
            result = claim.result
            if isinstance(result, str):
                rows.append([claim.a.name, claim.b.name, "—", "—", "—", "—", "—", "—", "—", f"not paired: {result}"])
                continue
            per_seed = "; ".join(f"{d:+.4f} (p {p:.3g})" for d, p in result.per_seed)
            rows.append([claim.a.name, claim.b.name, f"{result.delta:+.4f}", f"[{result.low:+.4f}, {result.high:+.4f}]",
                         f"{result.p:.3g}", f"{result.p_adjusted:.3g}", str(result.n), str(result.seed_pairs),
                         per_seed, "significant" if result.significant else "within noise"])
        doc.table(["method", "floor", "Δ", "95% interval", "p", "p (Holm)", "n", "seed pairs", "per seed Δ (p)",
                   "at 0.05, corrected"], rows)

    curves = learning_curves(groups)
    if curves:
        doc.heading(2, "Learning curves")
        fig, ax = figure()
        metric = groups[0].metric()
        for method, points in curves.items():
            xs = [x for x, _ in points]
            summaries = [seed_summary(g.values(), g.metric()) for _, g in points]
            ax.plot(xs, [s["mean"] for s in summaries], marker="o", label=method)
            ax.fill_between(xs, [s["min"] for s in summaries], [s["max"] for s in summaries], alpha=0.2)
        references = zero_label_references(groups)
        smallest = min(x for points in curves.values() for x, _ in points)
        for index, reference in enumerate(references):
            level = seed_summary(reference.values(), reference.metric())["mean"]
            colour = f"C{(len(curves) + index) % 10}"
            ax.axhline(level, linestyle="--", color=colour, linewidth=1, label=f"{reference.method} (0 labels)")
            ax.plot([smallest / 2], [level], marker="s", color=colour)
            ax.annotate("0", (smallest / 2, level), textcoords="offset points", xytext=(0, -12), ha="center",
                        fontsize=7)
        ax.set_xscale("log")
        size_key = next(g.size_key for g in groups if g.size_key)
        ax.set_xlabel("shots per class" if size_key == "data.shots" else "training examples")
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
        doc.image("learning-curves.png", png(fig), f"{metric} against training size (bands: range over seeds)")
        crossings = [c for c in findings.claims if c.purpose == "crossover"]
        for claim in crossings:
            size, previous = claim.size, claim.previous  # type: ignore[attr-defined]
            if isinstance(claim.result, PairedTest) and claim.result.significant:
                doc.paragraph(f"{claim.a.method} overtakes {claim.b.method} at {size:g} "
                              f"({claim.result.delta:+.4f}, {_verdict(claim.result)}).")
            else:
                doc.paragraph(f"The curves of {claim.a.method} and {claim.b.method} cross between {previous:g} and "
                              f"{size:g}, but the difference at {size:g} is {_verdict(claim.result)}: neither "
                              "overtakes the other there.")
        if not crossings:
            doc.paragraph("No curve crosses another over the sizes tried.")
        _zero_shot_lines(doc, findings, curves)

    costed = [g for g in groups if g.values()]
    if len(costed) > 1:
        _cost_section(doc, costed)

    calibrated = [g for g in groups if "ece" in g.runs[0].metrics["splits"].get(g.main_split(), {})]
    uncalibrated = [g.name for g in groups if g.metric() == "accuracy" and g not in calibrated]
    if calibrated:
        doc.heading(2, "Calibration")
        doc.paragraph("Expected calibration error (15 bins) of runs that give probabilities"
                      + (f"; {', '.join(uncalibrated)} give scores without probabilities (e.g. an SVC's decision "
                         "values), so no calibration is measured for them." if uncalibrated else "."))
        doc.table(["group", "split", "ECE (mean over seeds)"],
                  [[g.name, g.main_split(), f"{np.mean(g.values(metric='ece')):.4f}"] for g in calibrated])
        fig, ax = figure(4.5, 4.5)
        for group in calibrated[:8]:
            curve = reliability(group.runs[0].path, group.main_split())
            if curve is not None:
                centres, accuracy, counts = curve
                ax.plot(centres[counts > 0], accuracy[counts > 0], marker="o", label=group.name)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=1)
        ax.set(xlabel="confidence", ylabel="accuracy", title="reliability")
        ax.legend(fontsize=7)
        doc.image("reliability.png", png(fig), "reliability diagram: accuracy against confidence")


def _peak_memory_mb(group: Group) -> float:
    """A run's peak memory: on the GPU where it used one, else the process's resident set."""
    timing = group.runs[0].metrics["timing"]
    return float(timing.get("peak_cuda_mb") or timing.get("peak_rss_mb") or 0)


def _cost_section(doc: Document, costed: list[Group]) -> None:
    import matplotlib
    import matplotlib.ticker

    doc.heading(2, "Cost")
    fig, axes = figure(13, 3.6, columns=3)
    metric = costed[0].metric()
    memory = "peak GPU memory (MB)" if any(g.runs[0].metrics["timing"].get("peak_cuda_mb") for g in costed) \
        else "peak memory, RSS (MB)"
    costs = {"minutes": lambda g: np.mean([_wall_seconds(r.metrics["timing"]["seconds"]) for r in g.runs]) / 60,
             "trained": lambda g: max(g.runs[0].metrics.get("params", {}).get("trainable", 0), 1),
             "memory": lambda g: max(_peak_memory_mb(g), 1)}
    for ax, label, cost in ((axes[0], "wall time per run (min)", costs["minutes"]),
                            (axes[1], "trained parameters", costs["trained"]), (axes[2], memory, costs["memory"])):
        points = [(float(cost(g)), group_summary(g)[0]) for g in costed]
        front = pareto_front(points)
        ax.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue")
        if len(front) > 1:
            ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="tab:red",
                    label="Pareto front")
            ax.legend(fontsize=7)
        labelled = range(len(points)) if len(points) <= 12 else front  # many points: name the front only
        for rank, index in enumerate(sorted(labelled, key=lambda i: points[i])):
            ax.annotate(costed[index].name, points[index], fontsize=7, xytext=(4, 8 if rank % 2 else -11),
                        textcoords="offset points", arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5})
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(xlabel=label, ylabel=metric)
    doc.image("cost.png", png(fig), f"{metric} against wall time, trained parameters and peak memory (red: Pareto "
              "front of each)")
    # One front over all three costs: what no other group beats at no more time, training and memory.
    optimal = pareto_optimal([tuple(float(c(g)) for c in costs.values()) for g in costed],
                             [group_summary(g)[0] for g in costed])
    doc.paragraph(f"On the front (\u2605): no other group reaches a {metric} at least as high with no more wall "
                  "time, trained parameters and peak memory. Means over seeds are compared; the front describes "
                  "these runs, it is not a tested claim.")
    rows = [["\u2605" if on else "", g.name, g.runs[0].metrics.get("model") or "",
             f"{group_summary(g)[0]:.4f}",
             f"{np.mean([_wall_seconds(r.metrics['timing']['seconds']) for r in g.runs]) / 60:.2f}",
             f"{g.runs[0].metrics['timing'].get('peak_rss_mb', 0):.0f}",
             _fmt(g.runs[0].metrics["timing"].get("peak_cuda_mb"), 0),
             f"{g.runs[0].metrics.get('params', {}).get('trainable', 0):,} / "
             f"{g.runs[0].metrics.get('params', {}).get('total', 0):,}",
             ", ".join(f"{k} {v:.1f}" for k, v in g.runs[0].metrics["timing"].get("throughput", {}).items()
                       if v is not None)] for g, on in zip(costed, optimal)]
    doc.table(["front", "group", "model", metric, "minutes per run", "peak RSS MB", "peak CUDA MB",
               "trained / total params", "throughput (/s)"], rows)
