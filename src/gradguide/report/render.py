"""A small document model (headings, paragraphs, lists, tables, figures) as Markdown and HTML.

The report is built once as a list of blocks and written twice: Markdown with its figures as PNG
files beside it, and one self-contained HTML file with the same figures embedded as base64.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import re
from collections.abc import Sequence

FIGURES_DIR = "report_files"


@dataclasses.dataclass(frozen=True)
class Heading:
    """A section heading (level 1–3)."""

    text: str
    level: int = 2


@dataclasses.dataclass(frozen=True)
class Paragraph:
    """A paragraph of plain text (``**bold**`` is the only markup)."""

    text: str


@dataclasses.dataclass(frozen=True)
class BulletList:
    """An unordered list of plain-text items."""

    items: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Table:
    """A table with a header row and an optional caption.

    The cells of ``badge_column`` are verdicts: bold in Markdown, coloured badges in HTML.
    """

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""
    badge_column: int | None = None


@dataclasses.dataclass(frozen=True)
class Figure:
    """A PNG image with a file name (Markdown) and a caption."""

    name: str
    png: bytes
    caption: str


Block = Heading | Paragraph | BulletList | Table | Figure


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, blocks: Sequence[Block]) -> str:
    """The document as Markdown (figures referenced under ``report_files/``)."""
    out = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += [f"{'#' * b.level} {b.text}", ""]
        elif isinstance(b, Paragraph):
            out += [b.text, ""]
        elif isinstance(b, BulletList):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            if b.caption:
                out += [f"*{b.caption}*", ""]
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("|" + "|".join("---" for _ in b.header) + "|")
            out += [
                "| "
                + " | ".join(
                    _md_cell(f"**{c}**" if i == b.badge_column else c) for i, c in enumerate(row)
                )
                + " |"
                for row in b.rows
            ]
            out.append("")
        else:
            out += [f"![{b.caption}]({FIGURES_DIR}/{b.name}.png)", "", f"*{b.caption}*", ""]
    return "\n".join(out).rstrip() + "\n"


def _inline(text: str) -> str:
    """Escape text for HTML and turn ``**x**`` into <strong>x</strong>."""
    parts = html.escape(text).split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; }
th { background: #f2f2f2; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: 0.3rem; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-style: italic; font-size: 0.9rem; }
.badge { display: inline-block; padding: 0.05rem 0.5rem; border-radius: 0.7rem; color: #fff;
         font-size: 0.85rem; font-weight: 600; white-space: nowrap; background: #6e7781; }
.badge-reproduced { background: #1a7f37; }
.badge-not-reproduced { background: #cf222e; }
.badge-not-testable-failed-sanity-check { background: #9a6700; }
"""


def _badge(text: str) -> str:
    """A verdict as a coloured badge (grey unless a class below colours it)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return f'<span class="badge badge-{slug}">{html.escape(text)}</span>'


def to_html(title: str, blocks: Sequence[Block]) -> str:
    """The document as one self-contained HTML page (figures embedded as base64 PNG)."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for b in blocks:
        if isinstance(b, Heading):
            level = min(6, b.level)
            out.append(f"<h{level}>{_inline(b.text)}</h{level}>")
        elif isinstance(b, Paragraph):
            out.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, BulletList):
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            out.append("<table>")
            if b.caption:
                out.append(f"<caption>{_inline(b.caption)}</caption>")
            out.append("<tr>" + "".join(f"<th>{_inline(h)}</th>" for h in b.header) + "</tr>")
            for row in b.rows:
                cells = (
                    _badge(c) if i == b.badge_column else _inline(c) for i, c in enumerate(row)
                )
                out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            out.append("</table>")
        else:
            data = base64.b64encode(b.png).decode("ascii")
            out.append(
                f'<figure id="{html.escape(b.name)}"><img alt="{html.escape(b.caption)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{_inline(b.caption)}'
                "</figcaption></figure>"
            )
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"
