"""report.html opened in headless Chromium: the plotly charts are really drawn, with no network at all."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reports.html import render_html
from reports.names import display_name
from reports.results import render_results
from tests.reports.fixtures import cell_rows, frame, study_cells

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


def rendered_dom(page: Path, profile: Path) -> str:
    """The DOM after the page's scripts ran; every host name resolves to nothing, so a CDN would fail."""
    argv = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
        "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri(),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def chart_dom(dom: str, div_id: str) -> str:
    start = dom.index(f'id="{div_id}"')
    following = [dom.find('id="chart-', start + 1), dom.find('id="frontier-', start + 1)]
    end = min([i for i in following if i > 0], default=len(dom))
    return dom[start:end]


def test_charts_are_drawn_offline(tmp_path: Path) -> None:
    cells = study_cells()
    (tmp_path / "sweep").mkdir()
    cells.to_parquet(tmp_path / "sweep" / "cells.parquet")
    _, _, html_path = render_results(tmp_path / "sweep")
    dom = rendered_dom(html_path, tmp_path / "profile")

    topologies = ["solo", "tp2-mp", "tp2-ray", "2x-solo-shuffle"]
    levels = sorted(cells["concurrency"].unique())
    for metric in ("decode_tps", "prefill_tps", "ttft_ms"):
        chart = chart_dom(dom, f"chart-{metric}")
        assert 'class="main-svg"' in chart, f"{metric}: plotly did not draw (no .main-svg)"
        assert len(re.findall(r'class="trace scatter', chart)) == len(topologies)
        # one error bar per point: the std of every cell is drawn
        assert chart.count('class="errorbar"') == len(topologies) * len(levels)
        legend = re.findall(r'class="legendtext"[^>]*>([^<]*)<', chart)
        assert legend == [display_name(t) for t in topologies]
        ticks = re.findall(r'class="xtick"><text[^>]*>([^<]*)<', chart)
        assert ticks == [str(c) for c in levels]
    # the frontier: one line per topology through its levels, labelled c1..c64
    start = dom.index('id="frontier-0"')
    frontier = dom[start:dom.index("<h2>", start)]
    assert 'class="main-svg"' in frontier
    assert len(re.findall(r'class="trace scatter', frontier)) == len(topologies)
    assert frontier.count(">c64<") == len(topologies)
    # the tables are in the page too
    assert "When to use which topology" in dom and "Shuffle (+33%)" in dom


def test_a_topology_missing_at_some_levels_draws_only_its_points(tmp_path: Path) -> None:
    cells = frame(cell_rows("solo", 1, [40, 42]), cell_rows("solo", 2, [70, 72]), cell_rows("solo", 4, [100, 104]),
                  cell_rows("tp4-mp", 4, [200, 210]))
    (tmp_path / "sweep").mkdir()
    cells.to_parquet(tmp_path / "sweep" / "cells.parquet")
    _, _, html_path = render_results(tmp_path / "sweep")
    chart = chart_dom(rendered_dom(html_path, tmp_path / "profile"), "chart-decode_tps")
    assert len(re.findall(r'class="trace scatter', chart)) == 2
    assert chart.count('class="errorbar"') == 3 + 1


def test_nightly_trend_charts_are_drawn(tmp_path: Path) -> None:
    from tests.reports.test_history import nightly_report

    page = tmp_path / "report.html"
    page.write_text(render_html(nightly_report()), encoding="utf-8")
    dom = rendered_dom(page, tmp_path / "profile")
    trend = dom[dom.index('id="trend-decode_tps"'):dom.index('id="trend-prefill_tps"')]
    assert 'class="main-svg"' in trend
    assert len(re.findall(r'class="trace scatter', trend)) == 2  # Solo c1 and Cluster TP=2 c1
    assert re.findall(r'class="xtick"><text[^>]*>([^<]*)<', trend) == [f"night-{i}" for i in range(4)]
    assert "Regression gate: night-3 vs night-0" in dom


def test_telemetry_tables_and_time_charts_are_drawn(tmp_path: Path) -> None:
    from tests.telemetry.folder import LEVELS, TOPOLOGIES, write_folder

    folder = write_folder(tmp_path / "sweep", preempt=True)
    _, md_path, html_path = render_results(folder)
    dom = rendered_dom(html_path, tmp_path / "profile")
    for heading in ("Energy per output token (J)", "What the servers saw, per cell",
                    "Decode against the memory-bandwidth roofline", "Cost per million output tokens (USD)",
                    "Over time: KV cache, queues and power"):
        assert heading in dom, heading
    for topology, nodes, _ in TOPOLOGIES:
        start = dom.index(f'id="timeline-{topology}"')
        end = dom.find('id="timeline-', start + 1)
        chart = dom[start:end if end > 0 else len(dom)]
        assert 'class="main-svg"' in chart, f"{topology}: the time chart was not drawn"
        # KV per engine, running, waiting, power per node
        assert len(re.findall(r'class="trace scatter', chart)) == 1 + 2 + len(nodes)
        # every measured run is shaded and labelled with its concurrency
        labels = re.findall(r'class="annotation-text[^"]*"[^>]*>([^<]*)<', chart)
        assert [label for label in labels if label.startswith("c")] == [f"c{c}" for c in LEVELS]
    assert "preemption(s) during the cell" in dom  # the warning among the caveats


def test_workload_charts_are_drawn(tmp_path: Path) -> None:
    """A workload report's page: per test its metric vs load, the frontier of a closed test, and the p95 TTFT
    vs achieved rate of a rate sweep with its limits drawn."""
    import pandas as pd

    from bench.suite import load_suite
    from reports.workloads import WorkloadReport, workload_html

    suite = load_suite("arena")
    suite = suite.model_copy(update={"tests": [t for t in suite.tests if t.id in ("01-chat", "11-rate-sweep")]})
    rows = []
    for topology, speed in (("solo", 1.0), ("tp2-mp", 1.6)):
        for c in (1, 5, 10):
            for run in range(3):
                rows.append({"workload": "01-chat", "load": f"c{c}", "topology": topology, "concurrency": c,
                             "run": run, "decode_tps_req": speed * 40 / c**0.3 + run * 0.1,
                             "decode_tps": speed * 40 * c**0.7 + run, "ttft_ms": 200.0 * c / speed})
        for rate, p95 in ((0.1, 0.8), (0.3, 2.5), (0.7, 9.0), (1.0, 30.0)):
            rows.append({"workload": "11-rate-sweep", "load": f"{rate:g}rps", "topology": topology, "run": 0,
                         "rate": rate, "achieved_rate": rate * 0.98, "ttft_user_p95_ms": p95 * 1000 / speed})
    page = tmp_path / "report.html"
    page.write_text(workload_html(WorkloadReport(suite, pd.DataFrame(rows)), "arena"), encoding="utf-8")
    dom = rendered_dom(page, tmp_path / "profile")

    def drawn(div_id: str) -> str:
        start = dom.index(f'id="{div_id}"')
        end = dom.find('<div class="chart">', start)
        chart = dom[start:end if end > 0 else len(dom)]
        assert 'class="main-svg"' in chart, f"{div_id}: plotly did not draw"
        assert len(re.findall(r'class="trace scatter', chart)) == 2, div_id
        return chart

    assert drawn("frontier-01-chat").count(">c10<") == 2  # each topology's line labelled through its levels
    assert re.findall(r'class="xtick"><text[^>]*>([^<]*)<', drawn("workload-01-chat")) == ["c1", "c5", "c10"]
    rate = drawn("rate-11-rate-sweep")
    assert all(f">{limit} s<" in rate for limit in (2, 5, 10))  # the p95 limits are drawn and labelled
    assert "Capacity (11-rate-sweep)" in dom and "When to use which topology (measured workloads)" in dom
