"""A report as blocks (headings, paragraphs, tables, images, code), rendered to Markdown
(images beside it) and to one self-contained HTML page; every value from data or users
escaped; report files and image folders tunelab did not write are never replaced."""

from __future__ import annotations

import base64
import html
import math
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from tunelab.analysis.runs import RunRecord
from tunelab.core.errors import TunelabError
from tunelab.core.files import is_plain_name
from tunelab.core.registry import all_tasks
from tunelab.core.safety import atomic_write_bytes
from tunelab.core.stats import correlation_interval, wilson_interval


class Document:
    """A report as blocks, rendered to Markdown (images beside it) and to one
    self-contained HTML page (images embedded)."""

    def __init__(self):
        self.blocks: list[tuple] = []
        self.summary: list[str] = []  # the headline sentences, for the console
        self.analysis: dict = {}  # what the report decided, as data (analysis.json)

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


def fmt(value, digits: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def wall_seconds(seconds: Mapping[str, float]) -> float:
    """A method's time: the run's wall time (``total`` where recorded, else the sum of
    its phases) plus a feature pass it reused from the cache (``features_reused``: what
    that pass took when another run computed it), so a probe on cached features is not
    costed at nothing."""
    reused = float(seconds.get("features_reused", 0.0) or 0.0)
    if "total" in seconds:
        return float(seconds["total"]) + reused
    return float(sum(v for k, v in seconds.items() if isinstance(v, (int, float)) and k != "features_reused")) \
        + reused


def headline_cell(metric: str, value: float, n: int) -> str:
    if metric == "accuracy":
        low, high = wilson_interval(value, n)
    elif metric in ("spearman", "pearson"):
        low, high = correlation_interval(value, n, spearman=metric == "spearman")
    else:
        return f"{value:.4f}"
    return f"{value:.4f} [{low:.4f}, {high:.4f}]"


def describe(record: RunRecord) -> str:
    task = all_tasks().get(record.command)
    if task is None or task.describe is None:
        return ""
    try:
        return task.describe(record.metrics)
    except Exception:  # a report never fails on one run's description
        return ""


def main_split(record: RunRecord) -> str:
    splits = record.metrics["splits"]
    return "test" if "test" in splits else next(iter(splits))
