"""The report's pictures of many runs at once: training curves, confusion matrices side by
side, and the cost front (score against wall time, trained parameters, peak memory)."""

from __future__ import annotations

import json
import re

import numpy as np

from tunelab.analysis.comparisons import Group, group_summary, pareto_front, pareto_optimal
from tunelab.analysis.runs import RunRecord
from tunelab.core.plots import figure, png
from tunelab.core.safety import read_text_inside
from tunelab.report.render import Document, fmt, main_split, wall_seconds


def training_curves_png(records: list[RunRecord]) -> bytes | None:
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


def confusion_grid_png(records: list[RunRecord]) -> bytes | None:
    """The confusion matrices of runs with up to 30 classes side by side, each row
    normalised to the share of its true class, on one shared colour scale, titled by run."""
    import numpy as np

    panels = []
    for record in records:
        split = main_split(record)
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


def _peak_memory_mb(group: Group) -> float:
    """A run's peak memory: on the GPU where it used one, else the process's resident set."""
    timing = group.runs[0].metrics["timing"]
    return float(timing.get("peak_cuda_mb") or timing.get("peak_rss_mb") or 0)


def _short_number(value: float, _position=None) -> str:
    """1, 10, 1k, 1M: tick labels that do not run together on a log axis."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def cost_section(doc: Document, costed: list[Group]) -> None:
    import matplotlib
    import matplotlib.ticker

    doc.heading(2, "Cost")
    fig, axes = figure(13, 3.6, columns=3)
    metric = costed[0].metric()
    memory = "peak GPU memory (MB)" if any(g.runs[0].metrics["timing"].get("peak_cuda_mb") for g in costed) \
        else "peak memory, RSS (MB)"
    costs = {"minutes": lambda g: np.mean([wall_seconds(r.metrics["timing"]["seconds"]) for r in g.runs]) / 60,
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
        # Points carry their number in the table below: names would overlap where methods cost alike.
        for index, point in enumerate(points):
            ax.annotate(str(index + 1), point, fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(numticks=5))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_short_number))
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
    reused = [g.name for g in costed if any(r.metrics["timing"]["seconds"].get("features_reused") for r in g.runs)]
    if reused:
        doc.paragraph(f"{', '.join(reused)} read features another run had computed; their time counts that "
                      "feature pass as it took then, so a method is costed at what it needs, cached or not.")
    rows = [[str(index + 1), "\u2605" if on else "", g.name, g.runs[0].metrics.get("model") or "",
             f"{group_summary(g)[0]:.4f}",
             f"{np.mean([wall_seconds(r.metrics['timing']['seconds']) for r in g.runs]) / 60:.2f}",
             f"{g.runs[0].metrics['timing'].get('peak_rss_mb', 0):.0f}",
             fmt(g.runs[0].metrics["timing"].get("peak_cuda_mb"), 0),
             f"{g.runs[0].metrics.get('params', {}).get('trainable', 0):,} / "
             f"{g.runs[0].metrics.get('params', {}).get('total', 0):,}",
             ", ".join(f"{k} {v:.1f}" for k, v in g.runs[0].metrics["timing"].get("throughput", {}).items()
                       if v is not None)] for index, (g, on) in enumerate(zip(costed, optimal))]
    doc.table(["#", "front", "group", "model", metric, "minutes per run", "peak RSS MB", "peak CUDA MB",
               "trained / total params", "throughput (/s)"], rows)
