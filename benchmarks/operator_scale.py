"""Operator latency and memory, on the embedded control plane with the local job runner.

1. Dependency hand-off: a chain of N stages (the stand-in trainer, one short step each); for every stage,
   the time from its dependency's completion to its own first job (status.startTime - dep completionTime).
2. Memory: the operator's RSS idle, then with 100 live stages (a pipeline whose stages wait on a stage that
   never finishes), as a ratio to the idle baseline measured in the same run.

Usage: python benchmarks/operator_scale.py [--chain 12] [--stages 100] [--state-dir DIR]
(with no --state-dir it starts and stops a control plane of its own).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client, config  # noqa: E402

from gradatim.cluster import ControlPlane  # noqa: E402
from gradatim.cluster.progress import PlainProgress  # noqa: E402
from tests.operator_harness import Harness  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chain", type=int, default=12)
    parser.add_argument("--stages", type=int, default=100)
    parser.add_argument("--state-dir", default=None)
    args = parser.parse_args()

    own = args.state_dir is None
    plane = ControlPlane(args.state_dir or tempfile.mkdtemp(prefix="gradatim-bench-"))
    info = plane.info() if not own and plane.is_running() else plane.up(PlainProgress())
    api = config.new_client_from_config(config_file=str(info.kubeconfig))
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
    h = Harness(info, api, ns, Path(tempfile.mkdtemp(prefix="gradatim-bench-op-")))
    h.s3_secret()
    h.start()
    try:
        time.sleep(5)
        idle = rss_mib(h.operator.proc.pid)

        h.pipeline("chain")
        names = [f"s{i:02d}" for i in range(args.chain)]
        for i, name in enumerate(names):
            h.stage(name, "chain", deps=(names[i - 1],) if i else (), model={"fromStage": names[i - 1]} if i else None,
                    env={"STAND_IN_STEPS": "1", "STAND_IN_STEP_SECONDS": "0"})
        started = time.monotonic()
        h.wait("trainingpipelines", "chain", lambda o: (o.get("status") or {}).get("phase") == "Succeeded", 60 + 30 * args.chain, "Succeeded")
        wall = time.monotonic() - started
        stages = {n: h.get("trainingstages", n)["status"] for n in names}
        handoff = [(ts(stages[n]["startTime"]) - ts(stages[names[i - 1]]["completionTime"])).total_seconds() for i, n in enumerate(names) if i]

        h.pipeline("wide")
        h.stage("root", "wide", env={"STAND_IN_STEPS": "100000", "STAND_IN_STEP_SECONDS": "1"})
        for i in range(args.stages - 1):
            h.stage(f"w{i:03d}", "wide", deps=("root",), model={"fromStage": "root"})
        h.wait("trainingpipelines", "wide", lambda o: (o.get("status") or {}).get("stagesTotal") == args.stages, 300, f"{args.stages} stages")
        time.sleep(10)
        loaded = rss_mib(h.operator.proc.pid)

        print(f"dependency -> job latency over {len(handoff)} hand-offs: median {statistics.median(handoff) * 1000:.0f} ms, "
              f"p99 {percentile(handoff, 0.99) * 1000:.0f} ms, max {max(handoff) * 1000:.0f} ms")
        print(f"chain of {args.chain} stages: {wall:.1f} s wall, {wall / args.chain:.2f} s per stage (torchrun start-up included)")
        print(f"operator RSS: idle {idle:.1f} MiB, with {args.stages} live stages {loaded:.1f} MiB (x{loaded / idle:.2f} of idle, "
              f"+{(loaded - idle) * 1024 / args.stages:.0f} KiB per stage)")
    finally:
        h.stop()
        client.CoreV1Api(api).delete_namespace(ns)
        if own:
            plane.down(PlainProgress())
    return 0


if __name__ == "__main__":
    sys.exit(main())
