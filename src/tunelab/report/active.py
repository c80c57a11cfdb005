"""The active-learning section: how many labels each selection strategy saves to reach
the score random selection ends at, with the paired test at equal label counts."""

from __future__ import annotations

from tunelab.report.glance import Findings, verdict
from tunelab.report.render import Document


def active_learning_section(doc: Document, findings: Findings) -> None:
    """Where the report found an active-learning study (sizes set by active.labels, the
    floor a curve of its own: the random strategy, declared as baseline)."""
    savings = findings.savings
    if not savings:
        return
    reference = savings[0]["reference"]
    doc.heading(2, "Active learning")
    doc.paragraph(f"Each strategy selected its examples from the same pool with labels hidden until selected, "
                  f"starting from the same examples, and is tested against {reference} at equal label counts "
                  "(seeds paired). Labels saved: where a strategy's mean first reaches the mean "
                  f"{reference} ends at (linear between the sizes measured), against {reference}'s labels per "
                  "class; an estimate from means, with the test at the largest size beside it.")
    rows = []
    for saving in savings:
        method, last = saving["method"], saving["reference_labels"]
        claim = next((c for c in findings.claims if c.purpose == "floor" and c.a.method == method
                      and c.a.size is not None and float(c.a.size) == last), None)
        reached = saving["reaches_at"]
        rows.append([method, f"{saving['level']:.4f} at {last:g}",
                     f"{reached:.0f}" if reached is not None else f"not by {last:g}",
                     f"{saving['saves']:.0f} ({saving['share_saved']:.0%})" if reached is not None else "none",
                     f"{claim.result.delta:+.4f}, {verdict(claim.result)}" if claim is not None and
                     not isinstance(claim.result, str) else "not tested"])
    doc.table(["strategy", f"{reference} ends at", "reaches it at (labels per class)", "labels per class saved",
               f"against {reference} at equal labels (largest size)"], rows)
