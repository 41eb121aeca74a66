"""The report in a terminal (rich): the same display tables as report.md and report.html."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from reports.names import display_name
from reports.regress import RegressionResult, Status, mean_std_text, p_text
from reports.report import DisplayTable, Report
from reports.tables import format_pct


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


def print_regression(console: Console, result: RegressionResult) -> None:
    """The gate's verdict, then every cell that is not simply unchanged (regressions first)."""
    style = "bold red" if result.exit_code else "bold green"
    console.print(f"[{style}]{escape(result.summary())}[/]")
    table = Table(show_lines=False)
    for header in ("Topology", "c", "Metric", "Baseline", "Current", "Change", "p", "Status"):
        table.add_column(header, justify="right" if header in ("c", "Change", "p") else "left")
    order = [Status.REGRESSION, Status.FAILED, Status.MISSING, Status.INCONCLUSIVE, Status.IMPROVEMENT, Status.NEW]
    shown = sorted((c for c in result.comparisons if c.status in order), key=lambda c: order.index(c.status))
    for cell in shown:
        colour = "red" if cell.status.fails_gate else ("green" if cell.status is Status.IMPROVEMENT else "yellow")
        p = cell.p_better if cell.status is Status.IMPROVEMENT else cell.p_worse
        table.add_row(escape(display_name(cell.topology)), str(cell.concurrency), cell.metric.title,
                      mean_std_text(cell.baseline), mean_std_text(cell.current), format_pct(cell.change_pct),
                      p_text(p), f"[{colour}]{cell.status.value}[/]: {escape(cell.reason)}")
    if shown:
        console.print(table)
    for note in result.notes:
        console.print(f"[dim]{escape(note)}[/]")
