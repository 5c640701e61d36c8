"""``report.html``: the report's sections as one self-contained page (figures embedded as
base64; every name that comes from a spec is HTML-escaped).
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Sequence

from .report_types import Section


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}
pre{background:#f6f6f6;padding:1em;overflow:auto}"""


def render_html(sections: Sequence[Section], title: str) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{e(s.name)}</h2><p>{e(s.setting)}</p><ul>")
        parts += [f"<li>{e(note)}</li>" for note in s.notes]
        parts.append("</ul>")
        for caption, table in s.tables:
            parts.append(f"<h3>{e(caption)}</h3><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in table.headers)
                         + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in table.rows]
            parts.append("</table>")
        for caption, path in s.figures:
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            parts.append(f"<h3>{e(caption)}</h3><img alt='{e(caption, quote=True)}' "
                         f"src='data:image/png;base64,{data}'>")
        parts.append(f"<details><summary>resolved spec</summary><pre>{e(s.spec_yaml)}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)
