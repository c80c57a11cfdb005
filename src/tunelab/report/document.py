"""The comparison report of any runs or a study (`tunelab report`): the runs found and
read, their findings, and the sections in order, written as report.md and report.html."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tunelab.analysis.comparisons import group_runs
from tunelab.analysis.runs import RunRecord, find_runs
from tunelab.core.files import is_plain_name
from tunelab.core.safety import atomic_write_bytes, read_inside, read_text_inside
from tunelab.report.analysis_file import ANALYSIS_FORMAT, analysis_record
from tunelab.report.figures import confusion_grid_png, training_curves_png
from tunelab.report.glance import at_a_glance, find_findings
from tunelab.report.render import (
    HTML_SIGNATURE,
    MARKDOWN_SIGNATURE,
    Document,
    check_assets_target,
    check_report_target,
    main_split,
)
from tunelab.report.sections import (
    audit_section,
    class_distributions,
    group_sections,
    run_tables,
    search_records,
    search_section,
)

# --------------------------------------------------------------------------- comparison reports


logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the comparison report


def build_report(records: list[RunRecord], title: str, baseline: str | None = None,
                 outcomes: list | None = None, published: dict | None = None,
                 problems: list[str] | None = None, searches: list[dict] | None = None,
                 target: float | None = None, compare: list | None = None) -> Document:
    doc = Document()
    doc.heading(1, title)
    groups = group_runs(records, outcomes) if records else []
    findings = find_findings(groups, baseline, target, compare)
    doc.analysis = analysis_record(groups, findings)
    if records:
        at_a_glance(doc, findings, published or {})
        audit_section(doc, groups)
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
        search_section(doc, search)
    for problem in problems or []:
        doc.paragraph(f"Left out of this report: {problem}.")
    if not records:
        doc.paragraph("No finished runs to compare.")
        return doc
    group_sections(doc, groups, findings)
    run_tables(doc, records, groups, findings)
    class_distributions(doc, records)
    doc.heading(2, "Training curves")
    png = training_curves_png(records)
    if png:
        doc.image("training-curves.png", png, "training loss and validation metric of every training run, by step "
                  "(stars: the best checkpoint, the one kept)")
    else:
        doc.paragraph("No training runs.")
    doc.heading(2, "Confusion and predicted-vs-gold")
    grid = confusion_grid_png(records)
    if grid:
        doc.image("confusion.png", grid, "confusion matrices (rows: true class, as shares of it; one colour scale)")
    for record in records:
        split = main_split(record)
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


def write_report(paths: list[Path | str], out: Path | str, title: str = "tunelab report",
                 baseline: str | None = None, outcomes: list | None = None,
                 published: dict | None = None, searches: list[dict] | None = None,
                 target: float | None = None, compare: list | None = None) -> tuple[Path, Path]:
    """Markdown at ``out`` (images in ``<stem>_files/``) and a self-contained HTML beside it
    (and analysis.json); ``target``: say how many labels each curve needs to reach it;
    ``compare``: declared [A, B] claims, tested first.
    A report file or images folder that tunelab did not write is never replaced."""
    out = Path(out)
    if out.suffix.lower() in (".html", ".htm"):
        out = out.with_suffix(".md")
    elif out.suffix.lower() != ".md":
        out = out.with_suffix(".md") if out.suffix else out / "report.md"
    html_path = out.with_suffix(".html")
    analysis_path = out.parent / ("analysis.json" if out.stem == "report" else f"{out.stem}.analysis.json")
    assets = out.parent / f"{out.stem}_files"
    check_report_target(out, MARKDOWN_SIGNATURE)
    check_report_target(html_path, HTML_SIGNATURE)
    check_report_target(analysis_path, f'"format": "{ANALYSIS_FORMAT}"')
    check_assets_target(assets)
    problems: list[str] = []
    records = find_runs(paths, problems)
    if outcomes is None and len(paths) == 1 and (Path(paths[0]) / "study.json").is_file():
        outcomes, study = _study_state(Path(paths[0]))  # a study directory: its groups and settings
        baseline = baseline or study.get("baseline")
        published = published or study.get("published")
        target = target if target is not None else study.get("target")
        compare = compare or study.get("compare")
        searches = searches or search_records(Path(paths[0]), problems)
        # A search's trials scored validation only: compare its best run.
        records = [r for r in records if not any(o.name == r.name and getattr(o, "trial", False)
                                                 for o in outcomes)]
    doc = build_report(records, title, baseline, outcomes, published, problems, searches, target, compare)
    atomic_write_bytes(out, doc.markdown(assets).encode("utf-8"), own_folder=False)
    atomic_write_bytes(html_path, doc.html(title).encode("utf-8"), own_folder=False)
    atomic_write_bytes(analysis_path, (json.dumps(doc.analysis, indent=1) + "\n").encode("utf-8"), own_folder=False)
    for sentence in doc.summary:
        logger.info("%s", sentence)
    return out, html_path


# --------------------------------------------------------------------------- study sections


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


