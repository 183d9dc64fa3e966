"""Writes the results: results.json (merged across runs), RESULTS.md and results.png."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import aiormq
import asyncpg
import psutil
from sqlalchemy.engine import make_url

from bench.harness import AMQP_URL, DATABASE_URL


async def _versions() -> dict[str, str]:
    conn = await asyncpg.connect(
        make_url(DATABASE_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    postgres = str(await conn.fetchval("SHOW server_version"))
    await conn.close()
    amqp = await aiormq.connect(AMQP_URL)
    rabbit = amqp.server_properties.get("version", b"?")
    await amqp.close()
    return {
        "postgresql": postgres,
        "rabbitmq": rabbit.decode() if isinstance(rabbit, bytes) else str(rabbit),
    }


def machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        **asyncio.run(_versions()),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _section(title: str, rows: list[dict[str, Any]], footer: str) -> list[str]:
    return [f"## {title}", "", _table(rows), "", footer, ""]


def markdown(data: dict[str, Any]) -> str:
    meta, results = data["meta"], data["results"]
    mode = "smoke mode: figures only prove the benchmarks run" if meta["smoke"] else "full run"
    out = [
        "# Benchmark results",
        "",
        f"Run on {meta['date']} with `{meta['command']}` ({mode}).",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in meta["machine"].items()) + ".",
        "Absolute figures drift between runs on this shared 2-core machine; the ratios against",
        "the baselines measured in the same invocation are the comparable figures.",
        "",
    ]
    if "throughput" in results:
        t = results["throughput"]
        out += _section(
            "1. Throughput (zero provider latency, limits lifted)",
            t["rows"],
            "Each row is the median of interleaved project/floor pairs by ratio; the `pairs_`"
            f" columns give every pair in run order. Targets: {t['targets']}.",
        )
        if "cpu_ms_per_image" in t:
            out += _section(
                "Where the CPU goes (2 processes; ms per image, the servers' share included)",
                _breakdown(t["cpu_ms_per_image"]["2"]),
                "The benchmark's own publisher and subscriber are not counted.",
            )
    if "utilization" in results:
        u = dict(results["utilization"])
        targets = u.pop("targets")
        out += _section(
            "2. Provider utilization (0.5 s per image, 3 running, MAX_CONCURRENT 3)",
            [u],
            f"Targets: {targets}.",
        )
    if "storm" in results:
        s = results["storm"]
        rows = [{"system": k, **v} for k, v in s.items() if isinstance(v, dict) and k != "targets"]
        out += _section(
            "3. Rate-limit storm (4 submits/s, 4 running, tiers x 0.1)",
            rows,
            f"Makespan ratio (original / project): {s['makespan_ratio']}. Targets: {s['targets']}.",
        )
    if "latency" in results:
        lat = results["latency"]
        rows = [
            {"system": k, "offered_tasks_per_s": lat["offered_tasks_per_s"], **v}
            for k, v in lat.items()
            if isinstance(v, dict) and k != "targets"
        ]
        out += _section(
            "4. Latency overhead (half of scenario 1's throughput, zero provider latency)",
            rows,
            "Each system ran in interleaved project/floor pairs at the same rate; the"
            " percentiles are over the tasks of all its runs, and `runs_p99_ms` gives each"
            " run's p99 in run order. p50/p95/p99: each task's end-to-end time less the time"
            " its last image spent inside provider calls (the floor has none); e2e_: end to"
            " end. `p99_after_first_s_ms` leaves out the tasks of each run's first second."
            " Ratio to the"
            f" floor: p50 {lat['p50_ratio_to_floor']}, p99 {lat['p99_ratio_to_floor']}."
            f" Targets (project): {lat['targets']}.",
        )
    if "memory" in results:
        m = results["memory"]
        rows = [
            {
                "process": p,
                f"peak MB, {m['backlogs'][0]} tasks": m["peak_rss_mb_small"][p],
                f"peak MB, {m['backlogs'][1]} tasks": m["peak_rss_mb_large"].get(p),
                "growth": m["growth_ratio"].get(p),
            }
            for p in m["peak_rss_mb_small"]
        ]
        out += _section(
            "5. Memory under backlog (one worker draining)",
            rows,
            "The original took in "
            + " and ".join(map(str, m["original_tasks_taken_in"]))
            + " of the backlogs' tasks in the time it had. Targets (the project's processes):"
            + f" {m['targets']}, flat across backlog sizes.",
        )
    if data.get("notes"):
        out += ["## Notes", "", *data["notes"], ""]
    return "\n".join(out)


def _breakdown(systems: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    names = list(dict.fromkeys(n for cpu in systems.values() for n in cpu))
    rows: list[dict[str, Any]] = [
        {"process": n, **{s: cpu.get(n, "") for s, cpu in systems.items()}} for n in names
    ]
    rows.append(
        {"process": "machine", **{s: round(sum(cpu.values()), 2) for s, cpu in systems.items()}}
    )
    return rows


def _pairs(
    ax: Any,
    title: str,
    labels: list[str],
    left: tuple[str, list[float]],
    right: tuple[str, list[float]],
) -> None:
    """Two bars per label, side by side."""
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], left[1], 0.4, label=left[0])
    ax.bar([i + 0.2 for i in x], right[1], 0.4, label=right[0])
    ax.set_xticks(list(x), labels)
    ax.set_title(title)
    ax.legend()


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 8))
    if "throughput" in results:
        rows = results["throughput"]["rows"]
        _pairs(
            axes[0][0],
            "Throughput (images/s)",
            [f"{r['processes']} proc" for r in rows],
            ("project", [r["project_images_per_s"] for r in rows]),
            ("floor", [r["floor_images_per_s"] for r in rows]),
        )
    if "utilization" in results:
        u = results["utilization"]
        ax = axes[0][1]
        ax.bar(["project", "original"], [u["project_utilization"], u["original_utilization"]])
        ax.axhline(0.95, color="grey", linestyle="--", label="target 0.95")
        ax.set_ylim(0, 1.05)
        ax.set_title("Provider utilization (achieved / ideal)")
        ax.legend()
    if "storm" in results:
        s = results["storm"]
        names = ["project", "original"]
        _pairs(
            axes[1][0],
            "Rate-limit storm",
            names,
            ("makespan s", [s[n]["makespan_s"] for n in names]),
            ("429s", [s[n]["throttled_429"] for n in names]),
        )
    if "latency" in results:
        lat = results["latency"]
        names = ["project", "floor"]
        ax = axes[0][2]
        _pairs(
            ax,
            f"Latency overhead at {lat['offered_tasks_per_s']} tasks/s (ms)",
            names,
            ("p50", [lat[n]["p50_ms"] for n in names]),
            ("p99", [lat[n]["p99_ms"] for n in names]),
        )
        ax.axhline(lat["targets"]["p99_ms"], color="grey", linestyle="--", label="target p99")
        ax.legend()
    axes[1][2].axis("off")
    if "memory" in results:
        m = results["memory"]
        procs = list(m["peak_rss_mb_small"])
        _pairs(
            axes[1][1],
            "Peak RSS (MB) under backlog",
            procs,
            (f"{m['backlogs'][0]} tasks", [m["peak_rss_mb_small"][p] for p in procs]),
            (f"{m['backlogs'][1]} tasks", [m["peak_rss_mb_large"].get(p, 0) for p in procs]),
        )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(results: dict[str, Any], out: Path, command: str, smoke: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    data: dict[str, Any] = json.loads(store.read_text()) if store.exists() else {"results": {}}
    data["results"].update(results)
    data["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command,
        "smoke": smoke,
        "machine": machine(),
    }
    store.write_text(json.dumps(data, indent=2) + "\n")
    (out / "RESULTS.md").write_text(markdown(data))
    plot(data["results"], out / "results.png")
