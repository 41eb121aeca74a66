"""What every renderer of a report lays out (Markdown, the terminal, HTML): display tables of strings.

Analyses (reports/report.py, regress.py, history.py) build these; renderers (console.py, html.py and the
Markdown in report.py) only lay them out, so no renderer and no analysis needs the other's module.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DisplayTable:
    """What every renderer lays out: a title, column headers, rows of strings, notes under the table."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    intro: str = ""
    notes: list[str] = field(default_factory=list)
    # where a narrow terminal may split the columns: (label, column indexes) per part; empty = never split
    parts: list[tuple[str, list[int]]] = field(default_factory=list)


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    aligns = ["---:" if header == "c" else "---" for header in headers]
    return [line(headers), "|" + "|".join(aligns) + "|"] + [line(row) for row in rows]


def tables_markdown(tables: list[DisplayTable]) -> list[str]:
    """Each table as a Markdown section: heading, intro, the table, its notes."""
    out: list[str] = []
    for table in tables:
        out += [f"## {table.title}", ""]
        if table.intro:
            out += [table.intro, ""]
        out += markdown_table(table.headers, table.rows)
        out.append("")
        for note in table.notes:
            out += [f"_{note}_", ""]
    return out
