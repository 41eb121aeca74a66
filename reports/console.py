"""The report in a terminal (rich): the same display tables as report.md and report.html."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from reports.report import DisplayTable, Report


def rich_table(table: DisplayTable) -> Table:
    out = Table(title=table.title, title_style="bold", show_lines=False, caption=" ".join(table.notes) or None,
                caption_style="dim")
    for header in table.headers:
        is_text = header in ("Winner", "Use", "Use case") or header.startswith("Because")
        out.add_column(escape(header), justify="left" if is_text else "right",
                       style="bold green" if header in ("Winner", "Use") else None,
                       overflow="fold", no_wrap=not header.startswith("Because"))
    for row in table.rows:
        out.add_row(*(escape(cell) for cell in row))
    return out


def print_report(console: Console, report: Report) -> None:
    console.print(f"[bold]{escape(report.title)}[/]")
    for line in report.header_lines():
        console.print(f"  [dim]{escape(line)}[/]")
    for table in report.sections():
        console.print()
        console.print(rich_table(table))
    if report.caveats:
        console.print()
        console.print("[bold yellow]Caveats[/]")
        for caveat in report.caveats:
            console.print(f"  • {escape(caveat)}")
