"""Operator scale on the embedded control plane: memory, API requests per reconcile, reconcile latency and the
dependency hand-off, with many live stages.

Load, in one namespace watched by one operator:
  A. `--stages` live stages in `--pipelines` pipelines: each pipeline a suspended root and stages waiting on it;
  B. one pipeline of `--stages` stages: a chain behind a suspended root (the worst case for graph work);
  C. then, under that load, a chain of `--chain` stages run by the stand-in trainer, for the hand-off
     (dependency completion -> next job created).
Measured: the operator's RSS (idle, and with A+B+C live), API requests per reconcile (the API server's
`apiserver_request_total` over a steady window of resyncs, less the same window's background before the
operator started, over the operator's `gradatim_reconcile_total`), reconcile latency p50/p99 (the operator's
histogram) and the hand-off p50/p99.

`--baseline REF` runs the same load, in the same run, against the operator of git commit REF (a worktree), for a
before/after table; at a thousand stages an operator that LISTs per reconcile can take very long, so
`--baseline-stages` sizes its load separately.

Usage: python benchmarks/operator_scale.py --stages 1000 [--pipelines 50] [--chain 8] [--baseline 775a0d7 --baseline-stages 300]
       [--state-dir DIR]   (with no --state-dir it starts and stops a control plane of its own)
Last line: rss_mb=… p99_handoff_ms=… requests_per_reconcile=… (this tree's operator).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client, config  # noqa: E402

from gradatim.cluster import ControlPlane  # noqa: E402
from gradatim.cluster.process import spawn  # noqa: E402
from gradatim.cluster.progress import PlainProgress  # noqa: E402
from tests.conftest import own_node  # noqa: E402
from tests.operator_harness import Harness  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    """RSS of one process (the operator runs in one)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def series(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`, from Prometheus' text format."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def histogram_quantile(text: str, name: str, q: float, **labels: str) -> float:
    """As PromQL's histogram_quantile: linear within the bucket that holds the q-th observation."""
    buckets = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            le = re.search(r'le="([^"]+)"', line).group(1)
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    if not total:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


def apiserver_requests(info) -> float:
    raw = subprocess.run([str(info.kubectl), f"--kubeconfig={info.kubeconfig}", "get", "--raw", "/metrics"],
                         capture_output=True, text=True, check=True).stdout
    return series(raw, "apiserver_request_total")


def operator_metrics(h: Harness) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{h.metrics_port}/metrics", timeout=10).read().decode()


@contextmanager
def operator_from(ref: str | None):
    """PYTHONPATH for the operator of `ref` (a worktree, removed afterwards), or this tree's."""
    if ref is None:
        yield str(REPO)
        return
    path = Path(tempfile.mkdtemp(prefix="gradatim-baseline-")) / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), ref], check=True, capture_output=True)
    try:
        yield str(path)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], capture_output=True)


def wait_until(what: str, done, timeout: float) -> float:
    started = time.monotonic()
    while not done():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(1)
    return time.monotonic() - started


def measure(info, api, stages: int, pipelines: int, chain: int, ref: str | None, label: str, resync: float) -> dict[str, float]:
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace(own_node(ns))  # its pods for the harness's own pod runner
    h = Harness(info, api, ns, Path(tempfile.mkdtemp(prefix="gradatim-bench-op-")))
    h.s3_secret()
    custom = client.CustomObjectsApi(api)
    try:
        with operator_from(ref) as pythonpath:
            h.operator.env.update(PYTHONPATH=pythonpath, GRADATIM_OPERATOR_RESYNC_SECONDS=str(resync))
            # Started in that tree: `python -m` puts the working directory ahead of PYTHONPATH.
            h.operator.start = lambda: setattr(h.operator, "group", spawn(h.operator.argv, h.operator.log, Path(pythonpath), h.operator.env))
            window = 2 * resync
            before = apiserver_requests(info)
            time.sleep(window)
            background = apiserver_requests(info) - before  # the controllers' and the pod runner's own traffic
            h.start()
            # Out of the embedded Prometheus (it scrapes every second, for the tests): at this load a scrape costs the
            # operator a lot of CPU, and a real one scrapes every 30 s. The scrape's own cost is measured below.
            (Path(info.prometheus_sd_dir) / f"operator-{ns}.json").unlink(missing_ok=True)
            time.sleep(5)
            idle = rss_mb(h.operator.group)  # spawn starts the operator as its group's leader

            def phases_written(prefix: str, count: int) -> bool:
                items = custom.list_namespaced_custom_object("gradatim.io", "v1alpha1", ns, "trainingstages")["items"]
                return sum(1 for o in items if o["metadata"]["name"].startswith(prefix) and (o.get("status") or {}).get("phase")) >= count

            per = max(stages // pipelines, 2)
            started = time.monotonic()
            for p in range(pipelines):
                h.pipeline(f"wide{p:02d}")
                h.stage(f"w{p:02d}-root", f"wide{p:02d}", suspend=True)
                for i in range(per - 1):
                    h.stage(f"w{p:02d}-s{i:03d}", f"wide{p:02d}", deps=(f"w{p:02d}-root",), model={"fromStage": f"w{p:02d}-root"})
            h.pipeline("long")
            h.stage("l0000", "long", suspend=True)
            for i in range(1, stages):
                h.stage(f"l{i:04d}", "long", deps=(f"l{i - 1:04d}",), model={"fromStage": f"l{i - 1:04d}"})
            created = time.monotonic() - started
            settle = wait_until("every stage planned", lambda: phases_written("w", per * pipelines) and phases_written("l", stages), 1800)
            long_status = h.get("trainingpipelines", "long")["status"]
            assert long_status["stagesTotal"] == stages and len(long_status.get("stages", [])) + long_status.get("stagesNotListed", 0) == stages, long_status

            h.pipeline("chain")
            names = [f"c{i:02d}" for i in range(chain)]
            for i, name in enumerate(names):
                h.stage(name, "chain", deps=(names[i - 1],) if i else (), model={"fromStage": names[i - 1]} if i else None,
                        env={"STAND_IN_STEPS": "1", "STAND_IN_STEP_SECONDS": "0"})
            h.wait("trainingpipelines", "chain", lambda o: (o.get("status") or {}).get("phase") == "Succeeded", 120 + 60 * chain, "Succeeded")
            done = {n: h.get("trainingstages", n)["status"] for n in names}
            handoff = [(ts(done[n]["startTime"]) - ts(done[names[i - 1]]["completionTime"])).total_seconds() for i, n in enumerate(names) if i]

            # A steady window: nothing changes, so every request is the resyncs' and the reconciles' own.
            time.sleep(resync)
            m0, r0 = operator_metrics(h), apiserver_requests(info)
            time.sleep(window)
            m1, r1 = operator_metrics(h), apiserver_requests(info)
            reconciles = series(m1, "gradatim_reconcile_total") - series(m0, "gradatim_reconcile_total")
            requests = max(r1 - r0 - background, 0.0)
            loaded = rss_mb(h.operator.group)  # spawn starts the operator as its group's leader
            scrape_started = time.monotonic()
            exposition = operator_metrics(h)
            scrape = time.monotonic() - scrape_started
            result = {
                "stages_live": per * pipelines + stages + chain, "idle_rss_mb": idle, "rss_mb": loaded, "create_s": created, "settle_s": settle,
                "reconciles_per_s": reconciles / window, "requests_per_reconcile": requests / max(reconciles, 1),
                "p50_reconcile_ms": 1000 * histogram_quantile(m1, "gradatim_reconcile_duration_seconds", 0.5, kind="stage"),
                "p99_reconcile_ms": 1000 * histogram_quantile(m1, "gradatim_reconcile_duration_seconds", 0.99, kind="stage"),
                "p50_handoff_ms": 1000 * statistics.median(handoff), "p99_handoff_ms": 1000 * percentile(handoff, 0.99),
                "scrape_ms": 1000 * scrape, "series": sum(1 for line in exposition.splitlines() if line and not line.startswith("#")),
            }
            print(f"[{label}] " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()), flush=True)
            return result
    finally:
        h.stop()
        client.CoreV1Api(api).delete_namespace(ns)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stages", type=int, default=1000)
    parser.add_argument("--pipelines", type=int, default=50)
    parser.add_argument("--chain", type=int, default=8)
    parser.add_argument("--baseline", default=None, help="a git commit whose operator to measure too, e.g. 775a0d7")
    parser.add_argument("--baseline-stages", type=int, default=None)
    parser.add_argument("--resync-seconds", type=float, default=10.0,
                        help="the operators' resync period, short so that a steady window holds reconciles (shipped: 120)")
    parser.add_argument("--state-dir", default=None)
    args = parser.parse_args()

    own = args.state_dir is None
    plane = ControlPlane(args.state_dir or tempfile.mkdtemp(prefix="gradatim-bench-"))
    info = plane.info() if not own and plane.is_running() else plane.up(PlainProgress())
    api = config.new_client_from_config(config_file=str(info.kubeconfig))
    try:
        runs = {}
        if args.baseline:
            n = args.baseline_stages or args.stages
            try:
                runs["baseline"] = measure(info, api, n, min(args.pipelines, n), args.chain, args.baseline, f"baseline {args.baseline}, {n}+{n} stages",
                                           args.resync_seconds)
            except (TimeoutError, AssertionError) as err:  # an operator that cannot keep up at this load: say so, go on
                print(f"[baseline {args.baseline}, {n}+{n} stages] did not finish: {str(err).splitlines()[0]}", flush=True)
        runs["new"] = measure(info, api, args.stages, args.pipelines, args.chain, None, f"this tree, {args.stages}+{args.stages} stages",
                             args.resync_seconds)
    finally:
        if own:
            plane.down(PlainProgress())
    new = runs["new"]
    if "baseline" in runs:
        old = runs["baseline"]
        for key in ("rss_mb", "requests_per_reconcile", "p99_reconcile_ms", "p99_handoff_ms", "settle_s"):
            print(f"{key}: baseline {old[key]:.4g} ({old['stages_live']} live)  this tree {new[key]:.4g} ({new['stages_live']} live)")
    print(f"rss_mb={new['rss_mb']:.1f} p99_handoff_ms={new['p99_handoff_ms']:.0f} requests_per_reconcile={new['requests_per_reconcile']:.3f} "
          f"p50_reconcile_ms={new['p50_reconcile_ms']:.1f} p99_reconcile_ms={new['p99_reconcile_ms']:.1f} stages_live={new['stages_live']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
