"""python -m bench SCENARIO|all [--smoke] [--out DIR]

Scenarios: throughput, utilization, storm, latency, memory. ``all`` runs them in one
invocation (baselines measured alongside) and writes RESULTS.md, results.json and
results.png to --out (default bench/results)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import ROOT, log
from bench.scenarios import SCENARIOS, latency
from services.aio import run


async def _all(smoke: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, scenario in SCENARIOS.items():
        started = time.monotonic()
        if name == "latency":
            rows = results.get("throughput", {}).get("rows", [])
            two = next((r for r in rows if r["processes"] == 2), None)
            results[name] = await latency(smoke, two["project_images_per_s"] if two else None)
        else:
            results[name] = await scenario(smoke)
        results[name]["wall_s"] = round(time.monotonic() - started, 1)
        log(f"{name}: {json.dumps(results[name])}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--smoke", action="store_true", help="about ten seconds per scenario")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    command = "python -m bench " + " ".join(sys.argv[1:])
    if args.scenario == "all":
        results = run(_all(args.smoke))
    else:
        results = {args.scenario: run(SCENARIOS[args.scenario](args.smoke))}
    from bench.report import write

    write(results, args.out, command, args.smoke)


if __name__ == "__main__":
    main()
