"""The report's sections after the first screen: per method (seeds, paired comparisons,
learning curves, calibration), one table per command, class distributions, searches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tunelab.analysis.comparisons import Group, learning_curves, reliability, zero_label_references
from tunelab.analysis.runs import RunRecord
from tunelab.core.errors import counted
from tunelab.core.files import is_plain_name
from tunelab.core.plots import figure, png
from tunelab.core.safety import read_text_inside
from tunelab.core.stats import PairedTest, better, seed_summary
from tunelab.problems import headline_metric
from tunelab.problems.metrics import LOWER_IS_BETTER, below_majority
from tunelab.report.active import active_learning_section
from tunelab.report.figures import cost_section
from tunelab.report.forecasts import draw_forecasts, forecast_section
from tunelab.report.glance import Findings, detectable_text, verdict, zero_shot_lines
from tunelab.report.render import Document, describe, fmt, headline_cell

SEED_METRICS = ("accuracy", "f1_macro", "balanced_accuracy", "top5_accuracy", "ece", "f1_micro", "f1_samples",
                "subset_accuracy", "mean_average_precision", "spearman", "pearson", "mse")


# Beside each run's headline metric, the comparison tables show these where present.
SIDE_METRICS = ("f1", "f1_macro", "balanced_accuracy", "top5_accuracy", "mean_average_precision", "subset_accuracy",
                "pearson", "mse", "mae")


def class_distributions(doc: Document, records: list[RunRecord]) -> None:
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


def run_tables(doc: Document, records: list[RunRecord], groups: list[Group], findings: Findings) -> None:
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
                    record.name, describe(record), record.metrics["model"] or "—", record.metrics["dataset"], split,
                    str(values["n"]), metric, headline_cell(metric, values[metric], values["n"]),
                    "—" if base is None else f"{values[metric] - base:+.4f}",
                    *[fmt(values.get(m)) for m in side], "—" if seen is None else f"{seen:,}",
                ])
        for record in members:
            for warning in below_majority(record.metrics):
                doc.paragraph(f"Warning, {record.name}: {warning}.")
        doc.table(["run", "what", "model", "dataset", "split", "n", "metric", "value [95% interval]", "Δ floor",
                   *[m.replace("_", " ") for m in side], "labels seen"], rows)


def search_records(root: Path, problems: list[str]) -> list[dict]:
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


def search_section(doc: Document, search: dict) -> None:
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


def group_sections(doc: Document, groups: list[Group], findings: Findings) -> None:
    """Seed groups, paired comparisons, learning curves, cost and calibration."""
    seed_section(doc, groups)
    paired_section(doc, findings)
    curves_section(doc, groups, findings)
    costed = [g for g in groups if g.values()]
    if len(costed) > 1:
        cost_section(doc, costed)
    calibration_section(doc, groups)


def seed_section(doc: Document, groups: list[Group]) -> None:
    """Runs that differ only in their seed, summarised metric by metric."""
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


def paired_section(doc: Document, findings: Findings) -> None:
    """Every method against its floor, with each seed pair's own difference."""
    floor_claims = [c for c in findings.claims if c.purpose == "floor"]
    if floor_claims:
        doc.heading(2, "Paired comparisons")
        methods = sorted({c.result.method for c in floor_claims if isinstance(c.result, PairedTest)})
        doc.paragraph("Each method against its floor on the same examples: the difference of the headline metric "
                      "(mean over seed pairs; seeds paired by value, a single-run floor paired with every seed), "
                      "its interval at the corrected level (a t-interval over seed pairs; for one run, over "
                      "examples; it excludes 0 exactly when the corrected verdict is significant), the seed-aware "
                      "p-value and the same after the report's correction (pre-ordered chains, at 0.05 in all), each "
                      "seed pair's own difference and p-value, and the smallest difference this design detects "
                      "with power 0.8 at its corrected level, with the seeds (or, for one run, test examples) the "
                      "observed difference would need. Tests used: " + "; ".join(methods or ["none"]) + ".")
        rows = []
        for claim in floor_claims:
            result = claim.result
            if isinstance(result, str):
                rows.append([claim.a.name, claim.b.name, "—", "—", "—", "—", "—", "—", "—", f"not paired: {result}",
                             "—"])
                continue
            per_seed = "; ".join(f"{d:+.4f} (p {p:.3g})" for d, p in result.per_seed)
            low, high = result.corrected_interval()
            rows.append([claim.a.name, claim.b.name, f"{result.delta:+.4f}", f"[{low:+.4f}, {high:+.4f}]",
                         f"{result.p:.3g}", f"{result.p_adjusted:.3g}", str(result.n), str(result.seed_pairs),
                         per_seed, "significant" if result.significant else "within noise", detectable_text(result)])
        doc.table(["method", "floor", "Δ", "interval (corrected)", "p", "p (adjusted)", "n", "seed pairs",
                   "per seed Δ (p)", "at 0.05, corrected", "detectable (power 0.8)"], rows)


def curves_section(doc: Document, groups: list[Group], findings: Findings) -> None:
    """The headline against training size, with zero-shot levels and crossings in words."""
    curves = learning_curves(groups)
    if curves:
        doc.heading(2, "Learning curves")
        fig, ax = figure()
        metric = groups[0].metric()
        colours = {}
        for method, points in curves.items():
            xs = [x for x, _ in points]
            summaries = [seed_summary(g.values(), g.metric()) for _, g in points]
            line = ax.plot(xs, [s["mean"] for s in summaries], marker="o", label=method)[0]
            colours[method] = line.get_color()
            ax.fill_between(xs, [s["min"] for s in summaries], [s["max"] for s in summaries], alpha=0.2,
                            color=colours[method])
        draw_forecasts(ax, findings.forecasts, colours)
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
        unit = {"data.shots": "shots per class", "active.labels": "labels per class"}.get(size_key,
                                                                                          "training examples")
        ax.set_xlabel(unit)
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
        doc.image("learning-curves.png", png(fig), f"{metric} against training size (bands: range over seeds; "
                  "dashed: the forecast, chosen by backtest)")
        forecast_section(doc, findings.forecasts, findings.targets, unit)
        active_learning_section(doc, findings)
        crossings = [c for c in findings.claims if c.purpose == "crossover"]
        for claim in crossings:
            size, previous = claim.size, claim.previous  # type: ignore[attr-defined]
            if isinstance(claim.result, PairedTest) and claim.result.significant:
                ahead, behind, delta = (claim.a, claim.b, claim.result.delta) if better(
                    claim.metric, claim.result.delta, 0.0) else (claim.b, claim.a, -claim.result.delta)
                doc.paragraph(f"{ahead.method} overtakes {behind.method} at {size:g} "
                              f"({delta:+.4f}, {verdict(claim.result)}).")
            else:
                doc.paragraph(f"The curves of {claim.a.method} and {claim.b.method} cross between {previous:g} and "
                              f"{size:g}, but the difference at {size:g} is {verdict(claim.result)}: neither "
                              "overtakes the other there.")
        if not crossings:
            doc.paragraph("No curve crosses another over the sizes tried.")
        zero_shot_lines(doc, findings, curves)


def calibration_section(doc: Document, groups: list[Group]) -> None:
    """Expected calibration error and the reliability diagram of runs that give probabilities."""
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



def audit_section(doc: Document, groups: list[Group]) -> None:
    """Where a method's evaluated split copies training rows: its headline with and
    without the copies, and whether the order of the methods changes without them."""
    rows, plain, clean = [], {}, {}
    for group in groups:
        split, metric = group.main_split(), group.metric()
        pairs = [(r.metrics["splits"][split][metric], d[split]) for r in group.runs
                 if (d := r.metrics.get("deduplicated") or {}).get(split) and metric in d[split]["metrics"]]
        if not pairs:
            continue
        with_copies = float(np.mean([p for p, _ in pairs]))
        without = float(np.mean([d["metrics"][metric] for _, d in pairs]))
        copies, n = pairs[0][1]["copies_of_train"], pairs[0][1]["copies_of_train"] + pairs[0][1]["n"]
        plain[group.name], clean[group.name] = with_copies, without
        rows.append([group.name, f"{copies} of {n}", f"{metric} {fmt(with_copies)}", fmt(without),
                     f"{without - with_copies:+.4f}"])
    if not rows:
        return
    lower = any(g.metric() in LOWER_IS_BETTER for g in groups)
    order = lambda values: sorted(values, key=lambda name: values[name], reverse=not lower)  # noqa: E731
    changed = order(plain) != order(clean)
    doc.heading(2, "Data audit")
    doc.paragraph("Some test rows copy training rows (exact after normalising case, whitespace and punctuation, or "
                  "near: character 4-gram Jaccard of 0.7 or more), which inflates what they measure. Each method "
                  "scored without them (deduplicated test):")
    doc.table(["method", "rows copying train", "with them", "without them", "change"], rows)
    doc.paragraph("Without them the order of the methods " + (
        f"changes: {' > '.join(order(clean))} (with them {' > '.join(order(plain))})." if changed else
        "stays the same.") + " tunelab audit lists the copies; --dedup (dedup: true in a study's data) drops "
        "them from train.")
