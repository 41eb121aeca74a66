"""The whole report: Markdown, terminal, caveats, percentiles; results folders and `topo report`."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from bench.records import CLIENT_BOUND_LAG_SHARE
from bench.results_folder import FolderMeta, ResultsFolder
from common.errors import ResultsError
from reports.console import print_report
from reports.html import render_html
from reports.names import topology_colours
from reports.report import build_report, ttft_percentiles
from reports.results import render_results
from tests.reports.fixtures import cell_rows, frame, study_cells

META = FolderMeta(kind="sweep", spec={"model": "gemma4-26b", "runs": 2}, cluster={"name": "local-twin"},
                  startup_s={"tp2-ray": 160.4, "solo": 95.25})


def results_dir(tmp_path: Path, cells: pd.DataFrame, meta: FolderMeta | None = META,
                requests: pd.DataFrame | None = None) -> Path:
    """A folder as pandas would write it (no topo schema version): what `topo predict` wrote before."""
    cells.to_parquet(tmp_path / "cells.parquet")
    if meta is not None:
        ResultsFolder(tmp_path).write_meta(meta)
    if requests is not None:
        requests.to_parquet(tmp_path / "requests.parquet")
    return tmp_path


def test_markdown_has_every_section_with_the_winners() -> None:
    markdown = build_report(study_cells(), META).to_markdown()
    assert markdown.startswith("# Topology report — gemma4-26b")
    for heading in ("## Decode (t/s) — higher wins", "## Prefill (t/s) — higher wins", "## TTFT (ms) — lower wins",
                    "## Ray vs no-Ray: Cluster TP=2 (Ray) vs Cluster TP=2", "## When to use which topology",
                    "## Start-up time per topology", "## Caveats"):
        assert heading in markdown
    # layouts, each by its better executor (tp2-mp here): 3 runs at -1/0/+1% -> ± 2.48% (fixtures.study_cells)
    decode_c64 = ("| 64 | 2560 [2496–2624] | 3840 [3745–3935] (no Ray) | 5120 [4993–5247] | Shuffle (+33%) | +50% "
                  "| +100% |")
    assert decode_c64 in markdown
    assert "| 1 | 54.0 [52.7–55.3] | 60.0 [58.5–61.5] | -10% | no Ray |" in markdown  # Ray vs no-Ray decode at c1
    assert "| Solo | 95.2 |" in markdown and "| Cluster TP=2 (Ray) | 160.4 |" in markdown
    assert "- Cluster: local-twin" in markdown
    assert "single run" not in markdown  # 3 runs per cell: no caveat about single-run intervals


def test_terminal_rendering_shows_the_same_tables() -> None:
    buffer = io.StringIO()
    print_report(Console(file=buffer, width=250, color_system=None), build_report(study_cells(), META))
    text = buffer.getvalue()
    assert "Shuffle (+33%)" in text and "When to use which topology" in text and "Ray vs no-Ray" in text


def test_client_bound_cells_are_a_caveat() -> None:
    ttft = 100.0
    lag_at_threshold = CLIENT_BOUND_LAG_SHARE * ttft  # 10 ms: not over 10% of the TTFT
    cells = frame(cell_rows("solo", 1, [1, 1], ttft=[ttft, ttft], send_lag=[lag_at_threshold, 1.0]),
                  cell_rows("solo", 64, [1, 1], ttft=[ttft, ttft], send_lag=[15.0, 2.0]),
                  # 40% of a 10 ms TTFT, but under the 5 ms floor: scheduling jitter, not a busy client
                  cell_rows("tp2-mp", 1, [1, 1], ttft=[10, 10], send_lag=[4.0, 4.0]),
                  cell_rows("tp2-mp", 2, [1, 1], ttft=[100, 100]))
    cells["client_cpu_frac"] = 0.1
    cells.loc[(cells["topology"] == "tp2-mp") & (cells["concurrency"] == 2), "client_cpu_frac"] = 0.9
    report = build_report(cells)
    assert [(c.topology, c.concurrency) for c in report.client_bound] == [("solo", 64), ("tp2-mp", 2)]
    assert any("Solo at c64 may be client-bound: the client took up to 15.0 ms" in c for c in report.caveats)
    assert any("Cluster TP=2 at c2 may be client-bound: the client process used 90% of a CPU" in c
               for c in report.caveats)


def test_what_the_sweep_recorded_is_a_caveat() -> None:
    meta = FolderMeta(kind="sweep", status="interrupted",
                      errors={"tp2-ray": "ray start \x1b[1mtimed out\x1b[22m; log:\nline 1\nline 2"},
                      warnings=["solo: c=64 run 0: client-bound? max send lag 30.0 ms"],
                      spec={"model": "gemma4-26b", "pp": 1024, "tg": 128, "runs": 3}, who="ops@head",
                      started_at="2026-11-23T02:00:00+00:00", finished_at="2026-11-23T02:09:00+00:00",
                      cluster={"name": "two-sparks", "nodes": []}, versions={"vllm": None, "ray": "2.60.0"})
    report = build_report(frame(cell_rows("solo", 1, [1, 1]), cell_rows("tp2-mp", 1, [1, 1])), meta)
    assert any(c == "No Ray vs no-Ray table for Cluster TP=2: Cluster TP=2 (Ray) has no cells in this sweep."
               for c in report.caveats)
    assert report.title == "Topology report — gemma4-26b"
    assert report.caveats[:3] == [
        "The sweep's status is 'interrupted': not every planned cell may be here (`topo sweep --resume DIR` "
        "continues it).",
        "Cluster TP=2 (Ray) failed during the sweep: ray start timed out; log: (the whole message is in meta.json "
        "under errors).",
        "Recorded during the sweep: solo: c=64 run 0: client-bound? max send lag 30.0 ms",
    ]
    assert report.header_lines() == [
        "Kind: sweep", "Status: interrupted", "By: ops@head", "When: 2026-11-23T02:00:00+00:00 → 2026-11-23T02:09:00+00:00",
        "Cluster: two-sparks", "Load: pp1024, tg128, 3 run(s) per level", "Versions: ray 2.60.0",
    ]


def test_ttft_percentiles_from_requests() -> None:
    rows = [{"topology": "solo", "concurrency": 11, "start": 10.0, "first_token": 10.0 + i / 100, "error": None}
            for i in range(11)]  # TTFT 0, 10, ..., 100 ms
    rows.append({"topology": "solo", "concurrency": 11, "start": 10.0, "first_token": 99.0, "error": "HTTP 500"})
    table = ttft_percentiles(pd.DataFrame(rows))
    (only,) = table.itertuples()
    assert (only.p50, only.p90, only.p99, only.n) == (pytest.approx(50), pytest.approx(90), pytest.approx(99), 11)
    markdown = build_report(frame(cell_rows("solo", 11, [1, 1])), None, pd.DataFrame(rows)).to_markdown()
    assert "| 11 | 50 / 90 / 99 |" in markdown


def test_requests_parquet_is_read_for_ttft_only(tmp_path: Path) -> None:
    requests = pd.DataFrame({"topology": ["solo"] * 2, "concurrency": [1, 1], "run": [0, 1], "start": [1.0, 2.0],
                             "first_token": [1.1, 2.3], "error": [None, None],
                             "token_times": [[1.1, 1.2], [2.3, 2.4]]})
    directory = results_dir(tmp_path, frame(cell_rows("solo", 1, [1, 1])), requests=requests)
    loaded = ResultsFolder(directory).load(["start", "first_token", "error"]).requests
    assert "token_times" not in loaded.columns
    report, md_path, _ = render_results(directory)
    assert report.ttft_percentiles.iloc[0]["p50"] == pytest.approx(200.0)


def test_render_results_writes_both_files(tmp_path: Path) -> None:
    directory = results_dir(tmp_path, study_cells())
    report, md_path, html_path = render_results(directory)
    assert md_path.read_text() == report.to_markdown()
    page = html_path.read_text()
    assert page.count('class="plotly-graph-div"') == 4  # decode, prefill, TTFT and the frontier
    # works offline: no script is fetched, plotly.js (megabytes) is inline
    assert re.search(r"<script[^>]*\bsrc\s*=", page) is None
    assert len(page) > 1_000_000


def test_results_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="no such results folder"):
        ResultsFolder(tmp_path / "absent").load()
    with pytest.raises(ResultsError, match="has no cells.parquet"):
        ResultsFolder(tmp_path).load()
    (tmp_path / "cells.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ResultsError, match="not a readable parquet file"):
        ResultsFolder(tmp_path).load()
    results_dir(tmp_path, study_cells(), meta=None)
    (tmp_path / "meta.json").write_text("{broken")
    with pytest.raises(ResultsError, match="meta.json: not readable JSON"):
        ResultsFolder(tmp_path).load()
    (tmp_path / "meta.json").write_text(json.dumps({"schema_version": 2, "kind": "sweep", "stauts": "complete"}))
    with pytest.raises(ResultsError, match="stauts: unknown key"):
        ResultsFolder(tmp_path).load()


def topo(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    """Run the real CLI entry point in-process: exit code, stdout, stderr."""
    from topo.cli import main

    monkeypatch.setattr(sys, "argv", ["topo", *args])
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit) as exited:
        main()
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, " ".join(err.split())


def test_topo_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "good").mkdir()
    good = results_dir(tmp_path / "good", study_cells())
    code, out, err = topo(capsys, monkeypatch, "report", str(good))
    assert code == 0, err
    assert "Shuffle (+33%)" in out and "report.html" in out
    assert (good / "report.html").is_file() and (good / "report.md").is_file()

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    pd.DataFrame({"topology": ["solo"], "concurrency": [1]}).to_parquet(wrong / "cells.parquet")
    code, _, err = topo(capsys, monkeypatch, "report", str(wrong))
    assert code == 2
    assert "missing column(s) run, decode_tps, prefill_tps, ttft_ms" in err
    assert "Traceback" not in err

    code, _, err = topo(capsys, monkeypatch, "report", str(tmp_path / "nothing"))
    assert code == 2 and "no such results folder" in err


def test_a_topology_keeps_its_colour_when_another_is_missing() -> None:
    full = topology_colours(["solo", "tp2-mp", "tp2-ray", "2x-solo-shuffle"])
    partial = topology_colours(["solo", "tp2-mp", "2x-solo-shuffle", "tp4-mp", "tp8-mp", "3x-solo-shuffle"])
    assert partial["2x-solo-shuffle"] == full["2x-solo-shuffle"]
    assert len(set(partial.values())) == 6


def test_a_narrow_terminal_gets_the_wide_tables_in_parts() -> None:
    buffer = io.StringIO()
    print_report(Console(file=buffer, width=100, color_system=None), build_report(study_cells(), META))
    text = buffer.getvalue()
    assert "Decode (t/s) — higher wins: change vs solo" in " ".join(text.split())
    assert "Ray vs no-Ray: Cluster TP=2 (Ray) vs Cluster TP=2: TTFT" in " ".join(text.split())
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "5120 [4993–5247]" in text and "+100%" in text  # nothing cut off: Shuffle decode at c64 and its vs solo


def test_runs_stored_twice_are_a_caveat() -> None:
    cells = frame(cell_rows("solo", 1, [40, 41]), cell_rows("solo", 1, [40]), cell_rows("tp2-mp", 1, [1, 2]))
    report = build_report(cells)
    assert any(c.startswith("Some runs are stored twice (Solo c1)") for c in report.caveats)


def test_what_ran_heads_the_report_and_incidents_are_caveats() -> None:
    from bench.results_folder import Incident, NodeFacts, WhatRan

    spark = NodeFacts(engine="vllm", engine_version="0.19.1", nccl="2.27.3", driver="580.95.05", kernel="6.11.0",
                      env={"engine-rank0": {"NCCL_IB_HCA": "rocep1s0f1,roceP2p1s0f1", "NCCL_IB_DISABLE": "0"}})
    meta = FolderMeta(kind="sweep", status="complete", ran={"tp2-mp": WhatRan(executor="mp", nodes={"spark1": spark})},
                      incidents=[Incident(topology="tp2-mp", load="c16", runs_failed=[2, 3], at="2026-11-30T03:00:00",
                                          reason="no token on any of 16 in-flight request(s) for 120 s (limit 120 s)",
                                          action="torn down, brought up again, cell retried")])
    report = build_report(frame(cell_rows("solo", 1, [1, 1]), cell_rows("tp2-mp", 1, [1, 1])), meta)
    assert ("Ran Cluster TP=2: executor mp; spark1: vllm 0.19.1, NCCL 2.27.3 over RoCE rocep1s0f1,roceP2p1s0f1, "
            "driver 580.95.05, kernel 6.11.0") in report.header_lines()
    assert ("Incident: Cluster TP=2 hung at c16 (no token on any of 16 in-flight request(s) for 120 s (limit 120 s)); "
            "run(s) 2, 3 of that cell failed with it; torn down, brought up again, cell retried.") in report.caveats


def test_frontier_chart_plots_total_against_per_user_for_each_topology() -> None:
    report = build_report(study_cells(), META)
    (points,) = report.frontier.values()  # one workload
    assert set(points) == {"solo", "tp2-mp", "tp2-ray", "2x-solo-shuffle"}
    # fixture: decode_tps_req = decode_tps / c, so Shuffle at c64 gives 80 t/s per user, 5120 t/s in total
    assert (64, 80.0, 5120.0) in [(c, round(u, 6), round(t, 6)) for c, u, t in points["2x-solo-shuffle"]]
    assert [c for c, _, _ in points["solo"]] == [1, 2, 4, 8, 16, 32, 64]
    page = render_html(report)
    assert 'id="frontier-0"' in page and "Throughput vs interactivity" in page
    # cells keyed by workload get one chart each
    two = pd.concat([study_cells().assign(workload="pp1024/tg128"), study_cells().assign(workload="pp8192/tg128")])
    assert sorted(build_report(two, META).frontier) == ["pp1024/tg128", "pp8192/tg128"]
