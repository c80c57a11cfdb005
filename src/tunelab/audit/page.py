"""How an audit reads: audit.md (what was found, the worst examples of each kind, the
label quality of each class) and the few lines printed at the end."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tunelab.core.errors import counted

AUDIT_COLUMNS = ("split", "id", "issue", "score", "given", "suggested", "copy_split", "copy_id", "text")
SHOWN = 15  # examples per kind of finding on the page
SHARED = {"conflicting duplicate", "label error", "outlier"}  # findings of text and image data alike
WHAT = {
    "exact duplicate": "the same text after normalising case, whitespace and punctuation",
    "near duplicate": "character 4-gram Jaccard similarity at least {near}",
    "near duplicate (embedding)": "embedding cosine at least {cosine}",
    "conflicting duplicate": "a copy whose label differs from its original's",
    "label error": "the label disagrees with out-of-fold predictions (confident learning); score 1 - p(given)",
    "outlier": "far from every neighbour in embedding space; score: robust z",
    "one word": "a text of one word",
    "truncated": "longer than the encoder reads; score: tokens",
    "image duplicate": "perceptual hashes (dHash, 64 bits) within {bits} bits; score: 1 - distance / 64",
    "unreadable image": "the file cannot be decoded (the reason is the suggestion)",
    "tiny image": "shorter side under 32 pixels; score: that side",
    "grayscale image": "stored with one channel (converted to RGB for every model)",
    "cmyk image": "stored as CMYK (converted to RGB for every model)",
    "animated image": "several frames (the first is used); score: frames",
}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")[:120]


def audit_markdown(record: dict, findings: list, pooled) -> str:
    dup = record["duplicates"]
    lines = [f"# Audit of {record['dataset']}", "",
             f"{record['rows']:,} rows ({', '.join(f'{k} {v:,}' for k, v in record['splits'].items())}), "
             f"{record['problem']}, " + (f"embeddings from {record['model']}" if record["model"] else
                                         "no encoder (--model gives label errors and outliers)") + "; "
             f"{counted(record['flagged_rows'], 'row')} flagged.", "", "| finding | rows | what it means |",
             "| --- | --- | --- |"]
    counts = Counter(f.issue for f in findings)
    images = "images" in record
    for issue, meaning in WHAT.items():
        if images != (issue.endswith("image") or issue == "image duplicate") and issue not in SHARED:
            continue
        text = meaning.format(near=dup.get("near_threshold_jaccard"), cosine=dup.get("embedding_threshold_cosine"),
                              bits=dup.get("hash_distance_bits"))
        lines.append(f"| {issue} | {counts.get(issue, 0):,} | {text} |")
    across = dup.get("across_splits") or {}
    lines += ["", "Copies across splits (copy-original: rows): " + (
        ", ".join(f"{k} {v}" for k, v in across.items()) if across else "none") + ".", ""]
    quality = record["label_errors"].get("per_class") or []
    if quality:
        lines += ["## Label quality by class", "", "| class | rows | flagged | share | mean p(given) |",
                  "| --- | --- | --- | --- | --- |"]
        for q in quality:
            confidence = q.get("mean_self_confidence")
            lines.append(f"| {_cell(q['class'])} | {q['n']:,} | {q['flagged']:,} | {q['flagged_share']:.1%} | "
                         f"{'' if confidence is None else f'{confidence:.3f}'} |")
        lines.append("")
    for issue in WHAT:
        shown = [f for f in findings if f.issue == issue][:SHOWN]
        if not shown:
            continue
        lines += [f"## {issue} ({counts[issue]:,}; the first {len(shown)})", "",
                  "| split | id | score | given | suggested | copy of | text |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for f in shown:
            copy = f"{pooled.splits[f.copy_of]} {pooled.ids[f.copy_of]}" if f.copy_of is not None else ""
            lines.append(f"| {pooled.splits[f.row]} | {_cell(pooled.ids[f.row])} | {f.score:.3g} | "
                         f"{_cell(pooled.given[f.row])} | {_cell(f.suggested)} | {_cell(copy)} | "
                         f"{_cell(pooled.texts[f.row])} |")
        lines.append("")
    lines.append("Every finding is in audit.csv; the counts and settings in audit.json.")
    return "\n".join(lines) + "\n"


def print_summary(record: dict, path: Path) -> None:
    dup, labels = record["duplicates"], record["label_errors"]
    across = sum((dup.get("across_splits") or {}).values())
    print(f"audited {record['rows']:,} rows of {record['dataset']} in {record['seconds']['total']:.0f} s")
    if "images" in record:
        files = record["images"]
        print(f"  copies: {dup['image_copies']:,} ({across:,} across splits), {dup['conflicting']:,} with "
              f"conflicting labels; unreadable: {files['unreadable']:,}; tiny: {files['tiny']:,}; grayscale: "
              f"{files['grayscale']:,}; CMYK: {files['cmyk']:,}; animated: {files['animated']:,}")
    else:
        print(f"  copies: {dup['exact_copies']:,} exact, {dup['near_copies'] + dup['embedding_copies']:,} near "
              f"({across:,} across splits), {counted(dup['conflicting_groups'], 'group')} with conflicting labels")
        print(f"  one-word texts: {record['texts']['one_word']:,}; truncated: {record['texts'].get('truncated', 0):,}")
    print(f"  likely label errors: {labels['flagged']:,} ({labels['share']:.1%}); outliers: "
          f"{record['outliers']['outliers']:,}")
    print(f"  {path}/audit.md (every finding in audit.csv)")
