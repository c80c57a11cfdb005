"""The report's first screen: per family of comparable runs, the chart of every method's
headline with its interval, and the sentences a reader acts on (chosen on validation,
separated from the runner-up and the floor, zero-shot, labels seen, cost)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tunelab.analysis.comparisons import (
    Claim,
    Family,
    Group,
    choice_stability,
    choose_best,
    compare,
    correct,
    crossover_candidates,
    families,
    find_floor,
    group_summary,
    learning_curves,
    zero_label_references,
)
from tunelab.analysis.extrapolation import Forecast, curve_forecasts, labels_to_reach
from tunelab.analysis.savings import label_savings
from tunelab.core.plots import figure, png
from tunelab.core.stats import PairedTest, better, seed_summary
from tunelab.report.render import Document, fmt, wall_seconds


@dataclasses.dataclass
class Findings:
    """What a report concludes, decided once and then rendered: per family of comparable
    groups its floor, its chosen method, and every tested claim (corrected over pre-ordered chains)."""

    families: list[Family]
    floors: dict[int, tuple[Group | None, str]]  # id(family) -> (floor, how it is defined)
    chosen: dict[int, tuple[Group | None, str, Group | None]]  # id(family) -> (best, split that chose, runner-up)
    claims: list[Claim]
    stability: dict[int, float | None] = dataclasses.field(default_factory=dict)  # id(family) -> share it wins
    forecasts: list[Forecast] = dataclasses.field(default_factory=list)  # every curve's look ahead
    targets: list[dict] = dataclasses.field(default_factory=list)  # labels to reach --target, per curve
    savings: list[dict] = dataclasses.field(default_factory=list)  # active learning: labels saved against random
    unresolved: list[str] = dataclasses.field(default_factory=list)  # declared comparisons that name no group

    def claim(self, a: Group, b: Group, purpose: str) -> Claim | None:
        return next((c for c in self.claims if c.a is a and c.b is b and c.purpose == purpose), None)

    def family_of(self, group: Group) -> Family | None:
        return next((f for f in self.families if any(g is group for g in f.groups)), None)


def find_findings(groups: list[Group], baseline: str | None, target: float | None = None,
                  declared: list | None = None) -> Findings:
    """Every claim of the report, tested once per pair of groups and corrected over
    pre-ordered chains: the study's declared comparisons, one chain in the order given,
    first; per family the chosen method against the floor and against the
    runner-up first; each learning curve against the floor from its largest size down;
    each curve against each zero-shot reference from its largest size down (where it
    overtakes) and from its smallest size up (where zero-shot beats it); every other
    claim a chain of its own. Curves at three or more sizes are extrapolated (and, with
    a ``target``, asked how many labels reach it)."""
    fams = families(groups)
    forecasts: list[Forecast] = []
    savings: list[dict] = []
    floors, chosen, claims, chains, read = {}, {}, [], [], {}  # read: prediction files parsed once
    stability: dict[int, float | None] = {}
    tested: dict[tuple[int, int], Claim] = {}
    unresolved: list[str] = []

    def claim(a: Group, b: Group, family: Family, purpose: str, **extra) -> Claim | None:
        """A new claim, or None where the same pair was tested already (the claim then
        shares that test and adds no hypothesis to the family)."""
        first = tested.get((id(a), id(b)))
        if first is None and (id(b), id(a)) in tested:  # the same pair the other way round: one test
            first = tested[id(b), id(a)]
            a, b = b, a
        made = Claim(a, b, family.split, family.metric, purpose,
                     first.result if first else compare(a, b, family.split, family.metric, read))
        for key, value in extra.items():
            setattr(made, key, value)
        claims.append(made)
        if first is not None:
            return None
        tested[id(a), id(b)] = made
        return made

    chains.append([])
    for names in declared or []:
        found = [_named(groups, name) for name in names]
        if isinstance(found[0], str) or isinstance(found[1], str):
            unresolved.append(f"{names[0]} vs {names[1]}: " + next(f for f in found if isinstance(f, str)))
            continue
        family = next(f for f in fams if any(g is found[0] for g in f.groups))
        made = claim(found[0], found[1], family, "declared")
        if made is not None:
            chains[0].append(made)

    for family in fams:
        floor, how = find_floor(family, baseline)
        floors[id(family)] = (floor, how)
        best, split = choose_best(family.groups, family.metric)
        runner = None
        if best is not None:
            rest = [g for g in family.groups if g is not best and g.values(split, family.metric)]
            runner, _ = choose_best(rest, family.metric) if rest else (None, split)
        chosen[id(family)] = (best, split, runner)
        if best is not None and split != family.split:
            stability[id(family)] = choice_stability(family.groups, best, split, family.metric, read)
        # A floor measured at several sizes is met at the same size (random selection at equal label
        # counts); the floor's own step at other sizes is no method against it and leaves the family.
        floor_at = {repr(g.size): g for g in family.groups if floor is not None and g.method == floor.method}
        against_floor = {id(g): claim(g, floor_at.get(repr(g.size), floor), family, "floor") for g in family.groups
                         if floor is not None and g.method != floor.method}
        primary = [against_floor.get(id(best)) if best is not None else None]
        if best is not None and runner is not None:
            primary.append(claim(best, runner, family, "runner-up"))
        chains.append([c for c in primary if c is not None])
        placed = {id(c) for c in chains[-1]}
        members = {id(g) for g in family.groups}
        curves = {m: [(x, g) for x, g in points if id(g) in members]
                  for m, points in learning_curves(family.groups).items()}
        forecasts += curve_forecasts({m: p for m, p in curves.items() if p}, family.metric)
        if floor is not None and all(g.size_key == "active.labels" for p in curves.values() for _, g in p):
            savings += label_savings({m: p for m, p in curves.items() if p}, floor.method)
        for points in curves.values():
            chain = [against_floor.get(id(g)) for _, g in sorted(points, key=lambda p: -p[0])]
            chains.append([c for c in chain if c is not None and id(c) not in placed])
            placed |= {id(c) for c in chains[-1]}
        chains += [[c] for c in against_floor.values() if c is not None and id(c) not in placed]
        for ahead, behind, size, previous in crossover_candidates({m: p for m, p in curves.items() if p}):
            made = claim(ahead, behind, family, "crossover", size=size, previous=previous)
            chains.append([made] if made is not None else [])
        for reference in zero_label_references(family.groups):
            for points in curves.values():
                points = [(x, g) for x, g in points if g.runs[0].metrics.get("model")]  # floors are not methods
                overtakes = [claim(g, reference, family, "zero-shot", size=x)
                             for x, g in sorted(points, key=lambda p: -p[0])]
                overtakes = [c for c in overtakes if c is not None]
                chains.append(overtakes)
                behind = [_behind(c) for c in sorted(overtakes, key=lambda c: c.size)]  # type: ignore[attr-defined]
                claims.extend(behind)
                chains.append(behind)
    correct(chains)
    targets = [labels_to_reach(f, target) for f in forecasts] if target is not None else []
    return Findings(fams, floors, chosen, claims, stability, forecasts, targets, savings, unresolved)


def _named(groups: list[Group], name: str) -> Group | str:
    """The group a declared comparison names: a group's name, or a step with one group."""
    exact = [g for g in groups if g.name == name]
    steps = [g for g in groups if g.method == name]
    if exact or len(steps) == 1:
        return (exact or steps)[0]
    if steps:
        return f"step {name} has {len(steps)} groups; name one ({', '.join(g.name for g in steps[:4])})"
    return f"no group {name}"


def _behind(claim: Claim) -> Claim:
    """The same comparison as a hypothesis of the other chain (zero-shot ahead), with its
    own copy of the test, since the two chains correct it differently."""
    result = dataclasses.replace(claim.result) if isinstance(claim.result, PairedTest) else claim.result
    made = Claim(claim.a, claim.b, claim.split, claim.metric, claim.purpose, result, direction="behind")
    made.size = claim.size  # type: ignore[attr-defined]
    return made


def zero_shot_lines(doc: Document, findings: Findings, curves: dict) -> None:
    """Where each learning curve overtakes each zero-shot reference (the smallest size of
    the run of sizes, from the largest down, at which it is ahead and the test holds),
    and where zero-shot beats it (sizes, from the smallest up, at which the test holds
    with zero-shot ahead)."""
    against = [c for c in findings.claims if c.purpose == "zero-shot"]
    for reference in {id(c.b): c.b for c in against}.values():
        level = seed_summary(reference.values(), reference.metric())["mean"]
        doc.paragraph(f"{reference.method} learns from no label: {reference.metric()} {level:.4f}, drawn as the "
                      "dashed line at 0 labels.")
        for method in curves:
            mine = [c for c in against if c.b is reference and c.a.method == method]
            if not mine:
                continue
            ahead = sorted((c for c in mine if c.direction == "ahead" and isinstance(c.result, PairedTest)
                            and c.result.significant and better(c.metric, c.result.delta, 0.0)),
                           key=lambda c: c.size)  # type: ignore[attr-defined]
            if ahead:
                first = ahead[0]
                doc.paragraph(f"{method} overtakes {reference.method} at {first.size:g} "  # type: ignore[attr-defined]
                              f"({first.result.delta:+.4f}, {verdict(first.result)}).")
            else:
                doc.paragraph(f"{method} does not overtake {reference.method} at any size tried (no difference "
                              "in its favour holds after correction).")
            losing = sorted((c for c in mine if c.direction == "behind" and isinstance(c.result, PairedTest)
                             and c.result.significant and better(c.metric, 0.0, c.result.delta)),
                            key=lambda c: c.size)  # type: ignore[attr-defined]
            for c in losing:
                doc.paragraph(f"{reference.method} beats {method} at {c.size:g} "  # type: ignore[attr-defined]
                              f"({-c.result.delta:+.4f} for {reference.method}, {verdict(c.result)}).")


def verdict(result: PairedTest | str) -> str:
    """'significant' or 'within noise' with the corrected p; within noise also says what
    this design could detect and what would separate the observed difference."""
    if isinstance(result, str):
        return f"not tested ({result})"
    p = result.p_adjusted if result.p_adjusted is not None else result.p
    runs = "1 run" if result.one_run else f"{result.seed_pairs} seed pair{'s' if result.seed_pairs != 1 else ''}"
    text = (f"{'significant' if result.significant else 'within noise'} (adjusted p = {p:.3g}, "
            f"n = {result.n}, {runs})")
    if not result.significant and detectable_text(result):
        text += f"; {detectable_text(result)}"
    return text


def detectable_text(result: PairedTest) -> str:
    """'detects ±0.017; 5 seeds would separate +0.012' (or test examples, for one run)."""
    found = result.detectable()
    if not found or found["mde"] < 1e-6:  # nothing varies (two identical runs): nothing to say
        return ""
    text = f"detects ±{found['mde']:.4f}"
    needed, unit = found["needed"], found["unit"]
    if needed is None:
        return text
    if unit == "seeds":
        return text + (f"; {needed} seeds would separate {result.delta:+.4f}" if needed <= 1000 else
                       f"; more than 1,000 seeds would be needed to separate {result.delta:+.4f}")
    return text + f"; about {needed:,} test examples would separate {result.delta:+.4f}"


def _published_value(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def at_a_glance(doc: Document, findings: Findings, published: dict) -> None:
    """Per family of comparable runs: one chart of every group's headline metric with its
    interval, and what can be said: the method chosen on validation and its test score,
    whether it is distinguishable from the runner-up and from the floor (seed-aware
    tests, corrected over the report's pre-ordered chains), at what cost."""
    if not findings.families:
        return
    doc.heading(2, "At a glance")
    tested = [c for c in findings.claims if isinstance(c.result, PairedTest)]
    if tested:
        doc.paragraph("In plain words: a difference called significant below held up when the runs were "
                      "repeated with other seeds and scored on the same examples, and after allowing for the "
                      f"{len(tested)} comparisons this report makes; \"within noise\" means these runs cannot tell "
                      "the two apart (it does not mean they are equal). The tests: paired on the same examples, "
                      "seeds counted as chance, corrected over pre-ordered chains at 0.05.")
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
            ax.annotate(f"{mean:.4f}", (right, y), xytext=(9 if star is not None and star >= right else 6, 0),
                        textcoords="offset points", va="center", fontsize=8)
        ax.margins(x=0.14)
        # The label budget beside each name: a few-shot method is not read as a full-data one.
        budgets = [p[0].labels_seen() for p in points]
        ax.set_yticks(range(len(points)), labels=[
            f"{p[0].name} ({seen:,} labels)" if seen is not None else p[0].name for p, seen in zip(points, budgets)])
        ax.set_xlabel(f"{split} {metric} (bars: mean; lines: 95% interval" + ("; stars: published" if published
                                                                               else "") + ")")
        doc.image(f"at-a-glance-{index + 1}.png" if index else "at-a-glance.png", png(fig),
                  f"{split} {metric} of every method on {family.dataset}, with its 95% interval")
        sentences = glance_sentences(findings, family)
        doc.paragraph(" ".join(sentences))
        doc.summary.append(sentences[0])
    declared = [c for c in findings.claims if c.purpose == "declared"]
    if declared or findings.unresolved:
        doc.paragraph("Declared before the runs (the study's compare:, tested first, in the order given; each "
                      "only if the one before it held): " + "; ".join(
                          [f"{c.a.name} against {c.b.name}: "
                           + (f"{c.result.delta:+.4f}, " if isinstance(c.result, PairedTest) else "")
                           + verdict(c.result) for c in declared]
                          + [f"not tested ({u})" for u in findings.unresolved]) + ".")
    if published:
        rows = []
        for name, values in published.items():
            group = next((g for f in findings.families for g in f.groups if g.method == name or g.name == name), None)
            for pub_split, value in (values.items() if isinstance(values, dict) else []):
                number = _published_value(value)
                ours = group.mean(pub_split) if group and group.values(pub_split) else None
                rows.append([name, str(pub_split), fmt(number) if number is not None else str(value), fmt(ours),
                             group.runs[0].metrics.get("model") or "—" if group else "—"])
        doc.paragraph("Published numbers come from the paper's own setup; where our step uses another model "
                      "(the model column), they are context, not a like-for-like comparison.")
        doc.table(["step", "split", "published", "ours", "our model"], rows)


def _cheaper(runner: Group, best: Group) -> str:
    """What a tied runner-up saves: trained parameters, or time."""
    mine = best.runs[0].metrics.get("params", {}).get("trainable", 0)
    theirs = runner.runs[0].metrics.get("params", {}).get("trainable", 0)
    if mine and theirs < mine / 2:
        return f", while training {theirs / mine:.1%} of its trained parameters ({theirs:,} of {mine:,})"
    own = wall_seconds(best.runs[0].metrics.get("timing", {}).get("seconds", {}))
    other = wall_seconds(runner.runs[0].metrics.get("timing", {}).get("seconds", {}))
    if own and other < own / 2:
        return f", in {other / own:.0%} of its time"
    return ""


def glance_sentences(findings: Findings, family: Family) -> list[str]:
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
        share = findings.stability.get(id(family))
        if share is not None:
            sentences.append(f"It is highest in {share:.0%} of 1,000 resamples of the {chose_on} examples"
                             + (": a fragile choice, which more validation examples would settle." if share < 0.8
                                else "."))
    if runner is not None:
        claim = findings.claim(best, runner, "runner-up")
        result = claim.result if claim else "not tested"
        if isinstance(result, PairedTest) and result.significant:
            sentences.append(f"Its lead over the runner-up {runner.name} on {split} ({result.delta:+.4f}) is "
                             f"{verdict(result)}.")
        else:
            sentences.append(f"The runner-up {runner.name} is not separated from it on {split}: "
                             f"{verdict(result)}" + _cheaper(runner, best) + ".")
    if floor is not None and floor is not best:
        claim = next((c for c in findings.claims if c.a is best and c.purpose == "floor"), None)
        if claim is not None:  # the floor, or its group at the chosen method's size
            delta = f"{claim.result.delta:+.4f} " if isinstance(claim.result, PairedTest) else ""
            how = floor_how + (", at the same size" if claim.b is not floor else "")
            sentences.append(f"Against the floor {claim.b.name} ({how}): {delta}{verdict(claim.result)}.")
    elif floor is None:
        sentences.append("There is no floor to compare it with (add a baseline step).")
    params = best.runs[0].metrics.get("params", {})
    timing = best.runs[0].metrics.get("timing", {})
    seen = best.labels_seen()
    sentences.append(f"It trains {params.get('trainable', 0):,} of {params.get('total', 0):,} parameters, "
                     f"taking {wall_seconds(timing.get('seconds', {})) / 60:.1f} min and "
                     f"{timing.get('peak_rss_mb', 0):.0f} MB of memory per run"
                     + (f", and saw {seen:,} labelled examples (train and validation)." if seen is not None else "."))
    return sentences
