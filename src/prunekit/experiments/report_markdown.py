"""``report.md``: the report's sections as Markdown (figures linked as PNG files beside it)."""
from __future__ import annotations

import html
from typing import Sequence

from .report_types import Section


def _md(text: str) -> str:
    """Markdown-safe text: names from specs must not become HTML or break a table."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def render_markdown(sections: Sequence[Section], title: str) -> str:
    lines = [f"# {_md(title)}", ""]
    for s in sections:
        lines += [f"## {_md(s.name)}", "", _md(s.setting), ""]
        lines += [f"- {_md(note)}" for note in s.notes] + [""]
        for caption, table in s.tables:
            lines += [f"### {_md(caption)}", "", "| " + " | ".join(map(_md, table.headers)) + " |",
                      "|" + "|".join("---" for _ in table.headers) + "|"]
            lines += ["| " + " | ".join(map(_md, row)) + " |" for row in table.rows]
            lines.append("")
        for caption, path in s.figures:
            lines += [f"### {_md(caption)}", "", f"![{_md(caption)}]({path.name})", ""]
        lines += ["<details><summary>resolved spec</summary>", "", "```yaml", s.spec_yaml.rstrip(), "```", "",
                  "</details>", ""]
    return "\n".join(lines)
