"""Load, tokenise and pack a large chat dataset from S3: the trainer's path before (every rank downloads, reads the
set into Python lists, tokenises record by record, packs with an O(documents x packs) best fit) beside today's
(local rank 0 downloads into the node's scratch, `datasets` reads it as memory-mapped Arrow, tokenises in batches
into a cache the other ranks reuse, and TRL packs it best-fit-decreasing in O(n log n)), in one run.

Each path runs under `torchrun --nproc-per-node 2` (one node, two ranks) against SeaweedFS (started here, on
loopback) and reports wall time and peak RSS per rank. The old packer is timed on a prefix of the documents, with
the new packer on the same prefix: at a million documents it would run for hours. `--packer-sizes` then times
both packers alone on growing prefixes of the tokenised documents, where the O(documents x packs) one parts
from the O(n log n) one.

Usage: python benchmarks/data_pipeline.py [--records 1000000] [--packer-docs 20000] [--max-length 4096]
       python benchmarks/data_pipeline.py --packer-only --packer-sizes 25000,50000,100000,200000
Last line: `records=... old_peak_rss_mb=... new_peak_rss_mb=... rss_ratio=... data_rss_ratio=... old_peak_anon_mb=... new_peak_anon_mb=... anon_ratio=... packer_speedup=...`
(with --packer-only: `docs=... old_packer_s=... new_packer_s=... packer_speedup=...` for the largest size)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BUCKET = "bench"
WORDS = "the of a to is we so then sum product carry digit check answer step next value total add multiply divide".split()


def write_records(path: Path, n: int, seed: int = 0) -> None:
    """n chat records shaped like distilled reasoning traces: a prompt, a `<think>` completion, an answer."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            a, b = rng.randint(10, 99999), rng.randint(10, 99999)
            steps = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))
            f.write(json.dumps({"id": f"r{i}", "prompt": f"What is {a} + {b}?", "answer": str(a + b),
                                "completion": f"<think>{steps}</think> The answer is $\\boxed{{{a + b}}}$."}) + "\n")


# -- the path before: what gradatim/trainer/sources.py, midtrain.documents and packing.pack_best_fit did -------------

def old_read_table(path: Path) -> list[dict]:
    records: list[dict] = []
    for f in sorted(path.rglob("*.jsonl")):
        records.extend(json.loads(line) for line in f.read_text().splitlines() if line.strip())
    return records


def old_documents(records: list[dict], tokenizer) -> list[list[int]]:
    from gradatim.trainer.stages.sft import to_prompt_completion

    docs = []
    for record in records:
        row = to_prompt_completion(record, None, think=True)
        ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)
        docs.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return docs


def old_split_long(docs: list[list[int]], max_length: int) -> list[list[int]]:
    return [doc[i : i + max_length] for doc in docs for i in range(0, max(len(doc), 1), max_length)]


def old_pack_best_fit(lengths: list[int], max_length: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    packs: list[list[int]] = []
    room: list[int] = []
    for i in order:
        best = min((r, p) for p, r in enumerate(room) if r >= lengths[i]) if any(r >= lengths[i] for r in room) else None
        if best is None:
            packs.append([i])
            room.append(max_length - lengths[i])
        else:
            packs[best[1]].append(i)
            room[best[1]] -= lengths[i]
    return packs


# -- one rank of one path --------------------------------------------------------------------------------------------

class AnonPeak:
    """The peak of the process's anonymous memory (RssAnon), sampled every 20 ms. Peak RSS also counts the pages of
    memory-mapped files it has touched (the Arrow caches, the shared libraries), which are page cache the kernel can
    drop; anonymous memory is what the process itself holds."""

    def __init__(self) -> None:
        import threading

        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        with open("/proc/self/status") as f:
            kb = next((int(line.split()[1]) for line in f if line.startswith("RssAnon:")), 0)
        self.peak_kb = max(self.peak_kb, kb)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def stop_mb(self) -> float:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.peak_kb / 1024


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def rank_main(args: argparse.Namespace) -> None:
    import datasets

    from gradatim.storage import s3
    from gradatim.api.resolved import ResolvedSource
    from gradatim.trainer.artifacts import download_dir
    from gradatim.trainer.packing import pack
    from gradatim.trainer.runtime import Runtime
    from gradatim.trainer.sources import load_all
    from gradatim.trainer.stages.midtrain import as_chat, chat_documents
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    anon = AnonPeak()
    rt = Runtime.from_env(args.workdir)
    store = s3.client()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    started = time.perf_counter()
    report: dict = {"path": args.path, "rank": rt.rank, "base_rss_mb": current_rss_mb()}  # imports and tokenizer, before any data
    if args.path == "old":
        local = Path(tempfile.mkdtemp(prefix=f"old-rank{rt.rank}-", dir=args.workdir))  # every rank its own copy
        records = old_read_table(download_dir(store, args.uri, local / "data"))
        docs = old_documents(records, tokenizer)
        docs = old_split_long(docs, args.max_length)
        report["documents"] = len(docs)
        prefix = [len(d) for d in docs[: args.packer_docs]]
        t = time.perf_counter()
        old_pack_best_fit(prefix, args.max_length)
        report["packer_seconds_prefix"] = time.perf_counter() - t
    else:
        rows = load_all([ResolvedSource(uri=args.uri)], store, rt, to_row=as_chat)
        with rt.node_first():  # as the midtrain stage does
            docs = chat_documents(rows, tokenizer)
            del rows
            t = time.perf_counter()
            packed = pack(docs, args.max_length, packing=True)
            report["packer_seconds_all"] = time.perf_counter() - t
        report["documents"], report["packs"] = len(docs), len(packed)
        prefix = docs.select(range(min(args.packer_docs, len(docs))))
        t = time.perf_counter()
        pack(prefix.flatten_indices(), args.max_length, packing=True)  # fresh input: no cached result to reuse
        report["packer_seconds_prefix"] = time.perf_counter() - t
    rt.barrier()
    report["seconds"] = time.perf_counter() - started
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["peak_anon_mb"] = anon.stop_mb()
    with open(args.report, "a") as f:
        f.write(json.dumps(report) + "\n")
    rt.close()


# -- the packers alone -----------------------------------------------------------------------------------------------

def compare_packers(sizes: list[int], max_length: int, work: Path) -> dict[str, float]:
    """Both packers on the first n tokenised documents, for each n in `sizes`."""
    import datasets

    from gradatim.trainer import tiny
    from gradatim.trainer.packing import pack
    from gradatim.trainer.stages.midtrain import as_chat, chat_documents

    datasets.disable_progress_bars()
    records = work / "packer-records.jsonl"
    write_records(records, max(sizes), seed=1)
    rows = datasets.load_dataset("json", data_files=str(records), split="train", cache_dir=str(work / "cache")).map(as_chat)
    docs = chat_documents(rows, tiny.build_tokenizer())
    lengths = [min(n, max_length) for n in (len(ids) for ids in docs["input_ids"])]
    print(f"\n{'documents':>10} {'old packer s':>13} {'new packer s':>13} {'speed-up':>9}")
    last: dict[str, float] = {}
    for n in sizes:
        t = time.perf_counter()
        old_pack_best_fit(lengths[:n], max_length)
        old = time.perf_counter() - t
        prefix = docs.select(range(n)).flatten_indices()  # a fresh table: nothing cached to reuse
        t = time.perf_counter()
        pack(prefix, max_length, packing=True)
        new = time.perf_counter() - t
        print(f"{n:>10,} {old:>13.2f} {new:>13.2f} {old / new:>8.1f}x", flush=True)
        last = {"docs": n, "old_packer_s": old, "new_packer_s": new}
    return last


# -- the driver ------------------------------------------------------------------------------------------------------

def run_path(path: str, args: argparse.Namespace, env: dict, work: Path, tokenizer_dir: Path, uri: str) -> list[dict]:
    from gradatim.cluster.kubelet import free_port

    report = work / f"report-{path}.jsonl"
    scratch = work / f"scratch-{path}"
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={args.ranks}", f"--master-port={free_port()}",
            __file__, "--rank-of", path, "--uri", uri, "--tokenizer", str(tokenizer_dir), "--workdir", str(scratch), "--report", str(report),
            "--max-length", str(args.max_length), "--packer-docs", str(args.packer_docs)]
    print(f"==> {path} path: {args.ranks} ranks", flush=True)
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True)
    print(f"    done in {time.perf_counter() - t:.1f}s", flush=True)
    return sorted((json.loads(line) for line in report.read_text().splitlines()), key=lambda r: r["rank"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--packer-docs", type=int, default=20_000, help="documents the old packer (and the new, for the ratio) packs")
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--paths", default="old,new", help="which paths to run: old, new or both (the figures compare both)")
    parser.add_argument("--packer-sizes", default="", help="comma-separated document counts to time both packers alone on")
    parser.add_argument("--packer-only", action="store_true", help="only the packers (with --packer-sizes), no S3 and no ranks")
    parser.add_argument("--rank-of", choices=["old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_of:
        args.path = args.rank_of
        rank_main(args)
        return 0

    from gradatim.cluster.progress import PlainProgress
    from gradatim.local.storage import SeaweedFS
    from gradatim.trainer import tiny
    from gradatim.trainer.artifacts import upload_dir

    work = Path(tempfile.mkdtemp(prefix="gradatim-bench-data-"))
    sizes = [int(x) for x in args.packer_sizes.split(",") if x]
    if args.packer_only:
        last = compare_packers(sizes or [args.packer_docs], args.max_length, work)
        print(f"docs={last['docs']} old_packer_s={last['old_packer_s']:.2f} new_packer_s={last['new_packer_s']:.2f} "
              f"packer_speedup={last['old_packer_s'] / last['new_packer_s']:.1f}")
        return 0
    store_dir = SeaweedFS(work / "s3")
    storage = store_dir.start(BUCKET, PlainProgress())
    try:
        data = work / "records"
        data.mkdir()
        t = time.perf_counter()
        write_records(data / "part-00000.jsonl", args.records)
        size_mb = (data / "part-00000.jsonl").stat().st_size / 2**20
        uri = f"s3://{BUCKET}/chat-{args.records}/"
        upload_dir(storage.client(), data, uri)
        print(f"==> {args.records:,} records ({size_mb:.0f} MB of jsonl) written and uploaded to {uri} in {time.perf_counter() - t:.1f}s", flush=True)
        tokenizer_dir = work / "tokenizer"
        tiny.build_tokenizer().save_pretrained(tokenizer_dir)
        env = {**os.environ, "PYTHONPATH": str(REPO), "AWS_ENDPOINT_URL": storage.endpoint, "AWS_ACCESS_KEY_ID": storage.access_key,
               "AWS_SECRET_ACCESS_KEY": storage.secret_key, "AWS_DEFAULT_REGION": storage.region, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
        results = {path: run_path(path, args, env, work, tokenizer_dir, uri) for path in ("old", "new") if path in args.paths.split(",")}
    finally:
        store_dir.stop()
    print(f"\n{'path':<5} {'rank':>4} {'wall s':>8} {'base RSS MB':>12} {'peak RSS MB':>12} {'data MB':>8} {'peak anon MB':>13} {'packer s (' + str(args.packer_docs) + ' docs)':>22}")
    for path, ranks in results.items():
        for r in ranks:
            print(f"{path:<5} {r['rank']:>4} {r['seconds']:>8.1f} {r['base_rss_mb']:>12.0f} {r['peak_rss_mb']:>12.0f} {r['peak_rss_mb'] - r['base_rss_mb']:>8.0f} "
                  f"{r['peak_anon_mb']:>13.0f} {r['packer_seconds_prefix']:>22.3f}")
    print("(base: RSS after the imports and the tokenizer, the same in both paths; data: peak minus base, what the data path holds)")
    if set(results) != {"old", "new"}:
        return 0  # one path alone: its table above is the result
    new = results["new"][0]
    print(f"new packer on all {new['documents']:,} documents: {new['packer_seconds_all']:.1f}s -> {new['packs']:,} packs of <= {args.max_length} tokens")
    old_rss = max(r["peak_rss_mb"] for r in results["old"])
    new_rss = max(r["peak_rss_mb"] for r in results["new"])
    old_anon = max(r["peak_anon_mb"] for r in results["old"])
    new_anon = max(r["peak_anon_mb"] for r in results["new"])
    old_data = max(r["peak_rss_mb"] - r["base_rss_mb"] for r in results["old"])
    new_data = max(r["peak_rss_mb"] - r["base_rss_mb"] for r in results["new"])
    old_wall = max(r["seconds"] for r in results["old"])
    new_wall = max(r["seconds"] for r in results["new"])
    speedup = results["old"][0]["packer_seconds_prefix"] / max(new["packer_seconds_prefix"], 1e-9)
    if sizes:
        compare_packers(sizes, args.max_length, work)
    print(f"records={args.records} old_wall_s={old_wall:.1f} new_wall_s={new_wall:.1f} old_peak_rss_mb={old_rss:.0f} new_peak_rss_mb={new_rss:.0f} "
          f"rss_ratio={new_rss / old_rss:.3f} old_data_rss_mb={old_data:.0f} new_data_rss_mb={new_data:.0f} data_rss_ratio={new_data / old_data:.3f} old_peak_anon_mb={old_anon:.0f} new_peak_anon_mb={new_anon:.0f} anon_ratio={new_anon / old_anon:.3f} "
          f"packer_speedup={speedup:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
