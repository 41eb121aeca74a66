"""A workload load point's records become a cells row here, for measurements and the twin's predictions alike.

`BenchSession.run_point` (bench/session.py) measures a point against an endpoint; twin/workloads.py predicts
one in virtual time; both stamp the records with the test id and the load label and call `workload_row`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.metrics import NAN, run_metrics
from bench.metrics import SLOLimits
from bench.records import RequestRecord
from bench.suite import LoadPoint


def slo_of(point: LoadPoint) -> SLOLimits | None:
    slo = point.test.slo
    return SLOLimits(slo.ttft_ms, slo.e2e_ms) if slo is not None else None


def label_records(point: LoadPoint, records: Sequence[RequestRecord]) -> None:
    """Key the records on the point's cell: workload = the test id, load = the point's label."""
    for record in records:
        record.workload = point.workload
        record.load = point.label


def workload_row(point: LoadPoint, records: Sequence[RequestRecord], *, rate: float | None = None,
                 client_cpu_frac: float = NAN) -> dict[str, Any]:
    """One cells row (CELL_COLUMNS) of a point's run; `rate` overrides the offered rate (a scaled load)."""
    label_records(point, records)
    offered = rate if rate is not None else (point.open.rate if point.open is not None else NAN)
    return run_metrics(records, client_cpu_frac=client_cpu_frac, rate=offered, slo=slo_of(point))
