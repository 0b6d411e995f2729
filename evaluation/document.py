"""The report as data: sections of paragraphs and tables of plain-text cells, written from
``metrics.json``'s dictionary and rendered to HTML (``report.html``, figures embedded) and to
Markdown (``report.md``, for a README or a manuscript). One layout, two renderings."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Table:
    head: Sequence[str]
    rows: list[list[str]]


@dataclass
class Section:
    title: str
    level: int = 2
    #: Paragraphs, tables and notes in order; a str is a paragraph.
    body: list[str | Table] = field(default_factory=list)


# --------------------------------------------------------------------------- cell formats
def fmt(v: Any, digits: int = 3) -> str:
    """A number to ``digits`` decimals; '-' for None, NaN and infinities."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else "-"
    return str(v)


def ci(d: Mapping[str, Any], key: str = "auc") -> str:
    """``value [low, high]`` of an estimate dictionary (``auc`` or ``value`` key)."""
    value = d.get(key, d.get("value"))
    return f"{fmt(value)} [{fmt(d.get('ci_low'))}, {fmt(d.get('ci_high'))}]"


def p_value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def diagnostic_cells(d: Mapping[str, Any]) -> list[str]:
    """Sensitivity, specificity, PPV, NPV, accuracy: ``value [CI] (k/n)`` each."""
    return [
        ci(d[k]) + f" ({d[k]['successes']}/{d[k]['n']})"
        for k in ("sensitivity", "specificity", "ppv", "npv", "accuracy")
    ]


DIAGNOSTIC_HEAD = ("sensitivity", "specificity", "PPV", "NPV", "accuracy")


# --------------------------------------------------------------------------- renderings
STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#f0f0f0}"
    ".warn{background:#fff3cd;padding:0.6em;border:1px solid #e0c060}img{max-width:100%}"
    ".meta{color:#444;font-size:0.9em}figcaption{font-size:0.9em;margin-bottom:1.5em}"
)


def to_html(
    title: str,
    warning: str | None,
    sections: Sequence[Section],
    pngs: Mapping[str, Path],
    captions: Mapping[str, str] | None = None,
    header: Sequence[str] = (),
) -> str:
    """A self-contained HTML page: every cell escaped, figures embedded as data URIs with their
    ``captions`` (figure key -> sentence; the key when absent); ``header``: lines under the
    title (e.g. which model made the predictions)."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if warning:
        parts.append(f'<p class="warn">{html.escape(warning)}</p>')
    if header:
        parts.append('<p class="meta">' + "<br>".join(html.escape(h) for h in header) + "</p>")
    for section in sections:
        n = min(max(section.level, 2), 4)
        parts.append(f"<h{n}>{html.escape(section.title)}</h{n}>")
        for item in section.body:
            if isinstance(item, Table):
                th = "".join(f"<th>{html.escape(h)}</th>" for h in item.head)
                body = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                    for r in item.rows
                )
                parts.append(f"<table><tr>{th}</tr>{body}</table>")
            else:
                parts.append(f"<p>{html.escape(item)}</p>")
    if pngs:
        parts.append("<h2>Figures</h2>")
    for number, (name, png) in enumerate(pngs.items(), start=1):
        data = base64.b64encode(Path(png).read_bytes()).decode()
        caption = f"Figure {number}. {(captions or {}).get(name, name)}"
        parts.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(
    title: str | None, warning: str | None, sections: Sequence[Section], heading_offset: int = 0
) -> str:
    """GitHub Markdown of the same sections (no figures); headings shifted by
    ``heading_offset`` so the text nests under a document's own heading."""
    lines: list[str] = []
    if title:
        lines += [f"{'#' * (1 + heading_offset)} {title}", ""]
    if warning:
        lines += [f"**{warning}**", ""]
    for section in sections:
        lines += [f"{'#' * (section.level + heading_offset)} {section.title}", ""]
        for item in section.body:
            if isinstance(item, Table):
                lines.append("| " + " | ".join(_md_cell(h) for h in item.head) + " |")
                lines.append("|" + "---|" * len(item.head))
                lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in item.rows]
            else:
                lines.append(item)
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
