"""Labels saved: where each learning curve first reaches the level a reference curve
(random selection, in an active-learning study) ends at, read off the curves' means
with linear interpolation between the sizes measured. An estimate from means: the
report puts the paired test at equal label counts beside it."""

from __future__ import annotations

from tunelab.core.stats import better


def label_savings(curves: dict, reference: str) -> list[dict]:
    """Per curve other than ``reference`` ({method: [(size, group)]}): the labels at
    which its mean first reaches the reference's mean at the reference's largest size,
    and the labels saved against that size (none where it does not reach it by then)."""
    anchor = curves.get(reference)
    if not anchor or len(anchor) < 2:
        return []
    final_size, final_group = anchor[-1]
    level, metric = final_group.mean(), final_group.metric()
    found = []
    for method, points in curves.items():
        if method == reference:
            continue
        means = [(size, group.mean()) for size, group in points if size <= final_size and group.mean() is not None]
        reach, previous = None, None
        for size, mean in means:
            if mean == level or better(metric, mean, level):
                if previous is None or mean == previous[1]:
                    reach = size
                else:  # between the last size below the level and this one
                    share = (level - previous[1]) / (mean - previous[1])
                    reach = previous[0] + share * (size - previous[0])
                break
            previous = (size, mean)
        found.append({"method": method, "reference": reference, "metric": metric, "level": level,
                      "reference_labels": final_size, "reaches_at": reach,
                      "saves": final_size - reach if reach is not None else 0.0,
                      "share_saved": (final_size - reach) / final_size if reach is not None else 0.0})
    return found
