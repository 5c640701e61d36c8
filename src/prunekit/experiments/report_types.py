"""What a report shows, already formatted as text: ``Table`` and ``Section`` (one per sweep).
Built by :mod:`.report`, rendered by :mod:`.report_markdown` and :mod:`.report_html`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple


@dataclass
class Table:
    headers: List[str]
    rows: List[List[str]]


@dataclass
class Section:
    """Everything one sweep's part of the report shows, already formatted."""

    name: str
    setting: str
    spec_yaml: str
    notes: List[str] = field(default_factory=list)
    tables: List[Tuple[str, Table]] = field(default_factory=list)
    figures: List[Tuple[str, Path]] = field(default_factory=list)
