"""What an audit checks in image data without a model: every image opened as stored
(unreadable, tiny, grayscale or CMYK, animated) and hashed perceptually (dHash, 64
bits), so that the same picture in two splits is found even resized or re-encoded.
Decoding runs on a few threads (Pillow releases the GIL while it decodes)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tunelab.audit.findings import Finding, Pooled, original_first
from tunelab.data.duplicates import difference_hash, hamming
from tunelab.data.image_sources import to_rgb

TINY = 32  # pixels on the shorter side
HASH_DISTANCE = 6  # bits of 64 within which two pictures are candidate copies
THUMB, MATCH = 16, 0.97  # a candidate is a copy when the 16x16 grey thumbnails correlate at least this much
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def inspect(split, row: int) -> dict:
    """Mode, size, frames and perceptual hash of one image, or the reason it cannot be read."""
    try:
        image = split.raw(row)
        with image:
            info = {"mode": image.mode, "size": image.size, "frames": int(getattr(image, "n_frames", 1) or 1)}
            image.load()
            rgb = to_rgb(image)
            info["hash"] = difference_hash(rgb)
            info["thumb"] = np.asarray(rgb.convert("L").resize((THUMB, THUMB)), dtype=np.float32).ravel()
        return info
    except Exception as error:  # noqa: BLE001 - any decoder failure is a finding, not a crash
        return {"error": f"{type(error).__name__}: {error}"[:200]}


def inspect_all(dataset, problem, threads: int = 4) -> tuple[Pooled, list[dict]]:
    """Every split's images in one pooled list, each inspected."""
    splits, ids, given, infos = [], [], [], []
    with ThreadPoolExecutor(threads) as pool:
        for name, split in dataset.splits.items():
            splits += [name] * len(split)
            ids += [str(i) for i in split.ids]
            given += problem.label_texts(split.labels, dataset.class_names)
            infos += list(pool.map(lambda row, s=split: inspect(s, row), range(len(split))))
    keys = [f"{info['hash']:016x}" if "hash" in info else f"unreadable-{i}" for i, info in enumerate(infos)]
    return Pooled(splits, ids, list(ids), keys, given), infos  # an image's text is its name


def file_findings(infos: list[dict]) -> tuple[list[Finding], dict]:
    """Unreadable, tiny, grayscale, CMYK and animated images."""
    findings = []
    for row, info in enumerate(infos):
        if "error" in info:
            findings.append(Finding(row, "unreadable image", 1.0, info["error"]))
            continue
        if min(info["size"]) < TINY:
            findings.append(Finding(row, "tiny image", float(min(info["size"]))))
        if info["mode"] in GREY_MODES:
            findings.append(Finding(row, "grayscale image", 1.0))
        if info["mode"] == "CMYK":
            findings.append(Finding(row, "cmyk image", 1.0))
        if info["frames"] > 1:
            findings.append(Finding(row, "animated image", float(info["frames"])))
    counts = Counter(f.issue for f in findings)
    sizes = [min(i["size"]) for i in infos if "size" in i]
    return findings, {"unreadable": counts["unreadable image"], "tiny": counts["tiny image"],
                      "grayscale": counts["grayscale image"], "cmyk": counts["cmyk image"],
                      "animated": counts["animated image"], "tiny_below_pixels": TINY,
                      "shorter_side_median": float(np.median(sizes)) if sizes else 0.0,
                      "modes": dict(Counter(i["mode"] for i in infos if "mode" in i))}


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two thumbnails (1 for two flat images of the same shade)."""
    a, b = a - a.mean(), b - b.mean()
    scale = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if scale == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float((a * b).sum() / scale)


def image_duplicate_findings(pooled: Pooled, infos: list[dict]) -> tuple[list[Finding], dict]:
    """Pictures whose 64-bit dHashes differ in at most HASH_DISTANCE bits (candidates from
    eight 8-bit bands: two hashes that close agree on at least one band) and whose 16x16
    grey thumbnails correlate at least MATCH (a hash alone confuses two tall objects on
    white); the later copy flagged, copies whose labels disagree flagged again."""
    hashes = {row: info["hash"] for row, info in enumerate(infos) if "hash" in info}
    buckets: dict[tuple[int, int], list[int]] = {}
    for row, value in hashes.items():
        for band in range(8):
            buckets.setdefault((band, (value >> (8 * band)) & 0xFF), []).append(row)
    pairs = set()
    for members in buckets.values():
        if 1 < len(members) <= 2000:
            for k, i in enumerate(members):
                for j in members[k + 1:]:
                    if hamming(hashes[i], hashes[j]) <= HASH_DISTANCE and \
                            _correlation(infos[i]["thumb"], infos[j]["thumb"]) >= MATCH:
                        pairs.add((i, j))
    findings, flagged, partner = [], set(), {}
    for i, j in sorted(pairs):
        original, copy = original_first([i, j], pooled)
        if copy in flagged:
            continue
        distance = hamming(hashes[i], hashes[j])
        findings.append(Finding(copy, "image duplicate", 1.0 - distance / 64, "", original))
        if pooled.given[copy] != pooled.given[original]:
            findings.append(Finding(copy, "conflicting duplicate", 1.0 - distance / 64, pooled.given[original],
                                    original))
        flagged.add(copy)
        partner[copy] = original
    across = Counter(f"{pooled.splits[c]}-{pooled.splits[o]}" for c, o in partner.items()
                     if pooled.splits[c] != pooled.splits[o])
    return findings, {"image_copies": len(partner), "hash_distance_bits": HASH_DISTANCE, "thumbnail_correlation": MATCH,
                      "across_splits": dict(sorted(across.items())),
                      "conflicting": sum(f.issue == "conflicting duplicate" for f in findings)}
