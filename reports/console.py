"""The report in a terminal (rich): the same display tables as report.md and report.html."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from reports.names import display_name
from reports.regress import RegressionResult, Status, allowed_text, mean_std_text, p_text
from reports.display import DisplayTable
from reports.report import Report
from reports.workloads import WorkloadReport
from reports.tables import format_pct


TEXT_HEADERS = ("Winner", "Use", "Use case", "Topology", "Status", "Metric")


def _header(header: str, width: int) -> str:
    """A long header over a narrow column goes on several lines instead of widening the column."""
    return "\n".join(textwrap.wrap(header, width=max(width, 1), break_long_words=False)) or header


def _widths(table: DisplayTable) -> list[int]:
    widths = []
    for index, header in enumerate(table.headers):
        widest = max((len(row[index]) for row in table.rows), default=0)
        longest_word = max((len(word) for word in header.split()), default=0)
        widths.append(max(widest, longest_word, 1))
    return widths


def rich_table(table: DisplayTable) -> Table:
    out = Table(title=table.title, title_style="bold", box=box.SIMPLE_HEAVY, caption=" ".join(table.notes) or None,
                caption_style="dim")
    for header, width in zip(table.headers, _widths(table), strict=True):
        free_text = header.startswith("Because") or header == "Winner"  # may wrap on a narrow terminal
        out.add_column(escape(header) if free_text else escape(_header(header, width)),
                       justify="left" if header in TEXT_HEADERS or free_text else "right",
                       style="bold green" if header in ("Winner", "Use") else None,
                       min_width=None if free_text else width, no_wrap=not free_text)
    for row in table.rows:
        out.add_row(*(escape(cell) for cell in row))
    return out


def fitting_tables(width: int, table: DisplayTable) -> list[DisplayTable]:
    """The table, or its parts (DisplayTable.parts) one under the other when it is wider than the terminal."""
    needed = sum(w + 3 for w in _widths(table)) + 1
    if needed <= width or not table.parts:
        return [table]
    split = []
    for label, columns in table.parts:
        split.append(DisplayTable(
            f"{table.title}: {label}" if label else table.title,
            [table.headers[i] for i in columns], [[row[i] for i in columns] for row in table.rows],
            notes=table.notes if label == table.parts[0][0] else [],
        ))
    return split


def print_tables(console: Console, tables: list[DisplayTable]) -> None:
    """Display tables one under the other, each split into parts when wider than the terminal."""
    for table in tables:
        for part in fitting_tables(console.width, table):
            console.print()
            console.print(rich_table(part))


def print_results(console: Console, report: Report | WorkloadReport) -> None:
    """What `render_results` returned: a sweep's report, or a workload suite's per-test report."""
    if isinstance(report, WorkloadReport):
        print_tables(console, report.sections())
        print_caveats(console, report.caveats)
    else:
        print_report(console, report)


def print_report(console: Console, report: Report) -> None:
    console.print(f"[bold]{escape(report.title)}[/]")
    for line in report.header_lines():
        console.print(f"  [dim]{escape(line)}[/]")
    for table in report.sections():
        for part in fitting_tables(console.width, table):
            console.print()
            console.print(rich_table(part))
    print_caveats(console, report.caveats)


def print_caveats(console: Console, caveats: Sequence[str]) -> None:
    if caveats:
        console.print()
        console.print("[bold yellow]Caveats[/]")
        for caveat in caveats:
            console.print(f"  • {escape(caveat)}")


def print_regression(console: Console, result: RegressionResult) -> None:
    """The gate's verdict, then every cell that is not simply unchanged (regressions first)."""
    style = "bold red" if result.exit_code else "bold green"
    console.print(f"[{style}]{escape(result.summary())}[/]")
    table = Table(show_lines=False)
    for header in ("Topology", "c", "Metric", "Baseline", "Current", "Change", "Allowed", "p", "Status"):
        table.add_column(header, justify="right" if header in ("c", "Change", "Allowed", "p") else "left")
    order = [Status.REGRESSION, Status.FAILED, Status.MISSING, Status.INCONCLUSIVE, Status.IMPROVEMENT, Status.NEW]
    shown = sorted((c for c in result.comparisons if c.status in order), key=lambda c: order.index(c.status))
    for cell in shown:
        colour = "red" if cell.status.fails_gate else ("green" if cell.status is Status.IMPROVEMENT else "yellow")
        p = cell.p_better if cell.status is Status.IMPROVEMENT else cell.p_worse
        table.add_row(escape(display_name(cell.topology)), str(cell.concurrency), cell.metric.title,
                      mean_std_text(cell.baseline), mean_std_text(cell.current), format_pct(cell.change_pct),
                      allowed_text(cell), p_text(p), f"[{colour}]{cell.status.value}[/]: {escape(cell.reason)}")
    if shown:
        console.print(table)
    for note in result.notes:
        console.print(f"[dim]{escape(note)}[/]")
