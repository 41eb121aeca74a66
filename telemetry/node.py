"""What a node says about itself, read with ONE command per sample over the node's connector.

    node_probe_argv(workdir) -> argv     `sh -c` that prints nvidia-smi's line(s), /proc/meminfo, /proc/stat
    parse_node_probe(text, node) -> list[Reading]

GPU: `nvidia-smi --query-gpu=power.draw,temperature.gpu,clocks.sm,utilization.gpu --format=csv,noheader,
nounits` where it exists (it works on a GB10; its memory query does not, unified memory is read from
/proc/meminfo instead). The node's `<workdir>/twin-gpu/bin` is put in front of PATH: on a twin node the
twin installed an `nvidia-smi` there that answers from its power model (twin/power.py); on a real node the
directory does not exist and the real nvidia-smi answers. One code path for both.

CPU: the first line of /proc/stat (jiffies busy and total, counters: the share busy between two samples is
their ratio of increases) and the 1-minute load average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cluster.doctor import parse_meminfo as meminfo_bytes
from telemetry.prometheus import MetricSpec, Reading
from topology.inventory import twin_gpu_dir

GPU_QUERY = ("power.draw", "temperature.gpu", "clocks.sm", "utilization.gpu")
NVIDIA_SMI_ARGS = (f"--query-gpu={','.join(GPU_QUERY)}", "--format=csv,noheader,nounits")
SECTION = "--topo-section--"

# The series a node sample yields; kinds tell summaries how to treat them (counters: increases).
NODE_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("gpu_power_w", (), "gauge", "sum"),
    MetricSpec("gpu_temperature_c", (), "gauge", "max"),
    MetricSpec("gpu_clock_sm_mhz", (), "gauge", "max"),
    MetricSpec("gpu_utilization_pct", (), "gauge", "max"),
    MetricSpec("mem_total_bytes", (), "gauge"),
    MetricSpec("mem_available_bytes", (), "gauge"),
    MetricSpec("cpu_busy_jiffies", (), "counter"),
    MetricSpec("cpu_total_jiffies", (), "counter"),
    MetricSpec("load_1m", (), "gauge"),
)
_GPU_KEYS = ("gpu_power_w", "gpu_temperature_c", "gpu_clock_sm_mhz", "gpu_utilization_pct")


def node_probe_argv(workdir: str) -> list[str]:
    """One shell command for one sample; sections separated by a marker line, missing tools skipped."""
    script = (
        'PATH="$1/bin:$PATH"; '
        f"if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi {' '.join(NVIDIA_SMI_ARGS)} 2>/dev/null; fi; "
        f"echo {SECTION}; cat /proc/meminfo 2>/dev/null; "
        f"echo {SECTION}; head -n 1 /proc/stat 2>/dev/null; "
        f"echo {SECTION}; cat /proc/loadavg 2>/dev/null"
    )
    return ["sh", "-c", script, "sh", twin_gpu_dir(workdir)]


def _number(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return math.nan  # "[Not Supported]", "[N/A]": the field exists but has no value on this GPU


def parse_gpu_lines(lines: Sequence[str]) -> list[Reading]:
    """nvidia-smi's noheader/nounits CSV, one line per GPU: power summed, the rest the highest."""
    rows = [[_number(part) for part in line.split(",")] for line in lines if line.strip()]
    rows = [row for row in rows if len(row) == len(GPU_QUERY)]
    if not rows:
        return []
    readings = []
    for index, key in enumerate(_GPU_KEYS):
        values = [row[index] for row in rows if not math.isnan(row[index])]
        if values:
            readings.append(Reading(key, float(sum(values)) if key == "gpu_power_w" else max(values)))
    return readings


def parse_meminfo(lines: Sequence[str]) -> list[Reading]:
    """Total and available memory (unified memory: NVML reports none), read as the doctor reads it."""
    info = meminfo_bytes("\n".join(lines))
    wanted = {"MemTotal": "mem_total_bytes", "MemAvailable": "mem_available_bytes"}
    return [Reading(series, float(info[key])) for key, series in wanted.items() if key in info]


def parse_proc_stat(lines: Sequence[str]) -> list[Reading]:
    for line in lines:
        fields = line.split()
        if fields and fields[0] == "cpu" and len(fields) >= 5:
            jiffies = [_number(v) for v in fields[1:]]
            idle = jiffies[3] + (jiffies[4] if len(jiffies) > 4 else 0.0)  # idle + iowait
            total = sum(jiffies[:8])  # guest time is already inside user/nice
            return [Reading("cpu_busy_jiffies", total - idle), Reading("cpu_total_jiffies", total)]
    return []


def parse_loadavg(lines: Sequence[str]) -> list[Reading]:
    for line in lines:
        fields = line.split()
        if fields:
            return [Reading("load_1m", _number(fields[0]))]
    return []


def parse_node_probe(text: str) -> list[Reading]:
    """The readings of one `node_probe_argv` output; a section that is missing yields nothing."""
    sections: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip() == SECTION:
            sections.append([])
        else:
            sections[-1].append(line)
    sections += [[] for _ in range(4 - len(sections))]
    gpu, meminfo, stat, loadavg = sections[:4]
    return [*parse_gpu_lines(gpu), *parse_meminfo(meminfo), *parse_proc_stat(stat), *parse_loadavg(loadavg)]
