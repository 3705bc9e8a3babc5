"""A recipe's table under the CPU kernels other machines would pick, and what the trainer's AVX2 pin costs.

torch computes with the SIMD kernels of the CPU it finds (ATen's capability, MKL's branch, oneDNN's ISA); the
trainer pins them to AVX2 (gradatim/trainer/kernels.py) so that a run gives the same numbers on any x86-64 CPU. Each
setting below sets all three, as a CPU of that kind would (an explicit setting wins over the pin), and:
- runs the recipe (`gradatim run`, every stage for real) and reads each eval's pass@1 with its 95% interval;
- prints the table, each row's spread across settings, and whether the recipe's verdicts hold in each: every
  `rises` pair beyond the earlier row's interval, every `holds` row at or above the other's lower bound;
- times the tiny model's training step and sampling under each setting (in a process of its own, as torch reads the
  settings at its first op), as a ratio to the pinned AVX2 kernels.

Usage: python benchmarks/cpu_kernels.py [--recipe examples/quickstart] [--settings avx2,avx512,default] [--seed 0] [-j 2]
       python benchmarks/cpu_kernels.py --speed-only
Last line: `settings=... spread_<eval>=<points> ... verdicts_hold=<settings where all hold>/<settings run> <setting>_step_ratio=...`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gradatim.trainer.kernels import AVX2_KERNELS, cpuinfo  # noqa: E402

# Each as a CPU of that kind picks them: flags it needs, and the settings.
SETTINGS = {
    "avx2": ({"avx2", "fma"}, AVX2_KERNELS),  # the trainer's pin; what an AVX2 CPU (AMD Zen 1-3, Intel Haswell+) picks
    "avx512": ({"avx512f", "avx512bw", "avx512vl", "avx512dq"},
               {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}),
    "default": (set(), {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}),
}
# The quickstart's story: (earlier, later) rises beyond the earlier's interval; (row, reference) stays at or above
# the reference's lower bound. Pairs whose rows the recipe lacks are left out.
RISES = (("eval-base", "eval-midtrain"), ("eval-midtrain", "eval-sft"))
HOLDS = (("eval-dpo", "eval-sft"), ("eval-grpo", "eval-sft"))

SPEED = """
import json, sys, time, torch
from gradatim.trainer import tiny
from gradatim.trainer.kernels import cpu_kernels, describe
torch.set_num_threads({threads})
tok = tiny.build_tokenizer(); tok.padding_side = "left"
started = time.perf_counter(); tiny.train_teacher(tok, steps={steps}); step_ms = 1000 * (time.perf_counter() - started) / {steps}
model = tiny.build_model(tok).eval()
texts = [tok.apply_chat_template([{{"role": "user", "content": p.prompt}}], tokenize=False, add_generation_prompt=True) for p in tiny.tiny_math("eval", {batch})]
enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
started = time.perf_counter()
with torch.no_grad():
    model.generate(**enc, do_sample=True, max_new_tokens={new_tokens}, min_new_tokens={new_tokens}, pad_token_id=tok.pad_token_id)
print(json.dumps({{"step_ms": step_ms, "tokens_per_s": {batch} * {new_tokens} / (time.perf_counter() - started), "kernels": describe(cpu_kernels())}}))
"""


def runnable(names: list[str]) -> list[str]:
    flags = set(cpuinfo("flags").split())
    kept = [n for n in names if SETTINGS[n][0] <= flags]
    for n in sorted(set(names) - set(kept)):
        print(f"{n}: skipped, this CPU lacks {' '.join(sorted(SETTINGS[n][0] - flags))}")
    return kept


def settings_env(name: str) -> dict[str, str]:
    return {**os.environ, **SETTINGS[name][1], "PYTHONPATH": str(REPO)}


def speed(name: str, threads: int, steps: int, batch: int, new_tokens: int) -> dict:
    code = SPEED.format(threads=threads, steps=steps, batch=batch, new_tokens=new_tokens)
    done = subprocess.run([sys.executable, "-c", code], env=settings_env(name), capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def seeded_copy(recipe: Path, seed: int | None, into: Path) -> Path:
    """The recipe's YAML with every stage's `seed` set (when given)."""
    shutil.copytree(recipe, into)
    if seed is not None:
        for path in into.glob("*.yaml"):
            docs = list(yaml.safe_load_all(path.read_text()))
            for doc in docs:
                if doc and doc.get("kind") == "TrainingStage":
                    doc["spec"]["seed"] = seed
            path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return into


def run_recipe(recipe: Path, name: str, workdir: Path, jobs: int) -> dict[str, tuple[float, float, float]]:
    """eval stage -> (pass@1, low, high) of its first eval set, from a `gradatim run` under setting `name`."""
    from gradatim.local.world import read_status

    state = workdir / f"state-{name}"
    env = {k: v for k, v in settings_env(name).items() if not k.startswith("AWS_")}  # a SeaweedFS of its own
    env["GRADATIM_HOME"] = str(workdir / f"home-{name}")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "gradatim", "run", str(recipe), "--state-dir", str(state), "-j", str(jobs)],
                          env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name}: gradatim run failed ({done.returncode}); see {state}/run.log\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    _, _, stages = read_status(state)
    table = {}
    for stage in stages:
        metrics = stage.status.metrics or {}
        first = next((k.split("/", 1)[1] for k in metrics if k.startswith("pass@1/")), None)
        if stage.spec.type == "eval" and first:
            table[stage.metadata["name"]] = (metrics[f"pass@1/{first}"], metrics[f"pass@1_ci_low/{first}"], metrics[f"pass@1_ci_high/{first}"])
    print(f"{name}: recipe ran in {time.monotonic() - started:.0f}s", flush=True)
    return table


def verdicts(table: dict[str, tuple[float, float, float]]) -> list[str]:
    """The recipe's story, broken: one line per pair that does not hold (empty: all hold)."""
    broken = [f"{later} {100 * table[later][0]:.1f} does not rise beyond {earlier}'s {100 * table[earlier][2]:.1f}"
              for earlier, later in RISES if earlier in table and later in table and not table[later][0] > table[earlier][2]]
    broken += [f"{row} {100 * table[row][0]:.1f} falls below {reference}'s {100 * table[reference][1]:.1f}"
               for row, reference in HOLDS if row in table and reference in table and not table[row][0] >= table[reference][1]]
    return broken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "examples" / "quickstart")
    parser.add_argument("--settings", default="avx2,avx512,default", help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--seed", type=int, help="every stage's seed (default: the recipe's own)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="`gradatim run -j`")
    parser.add_argument("--speed-only", action="store_true", help="time the kernels, run no recipe")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=60, help="training steps timed per setting")
    parser.add_argument("--batch", type=int, default=64, help="sequences sampled at once, timed per setting")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--keep", type=Path, help="keep each run's state here (default: a temp dir, removed)")
    args = parser.parse_args()
    names = runnable([n.strip() for n in args.settings.split(",") if n.strip()])
    summary: dict[str, str] = {"settings": ",".join(names)}

    speeds = {n: speed(n, args.threads, args.steps, args.batch, args.new_tokens) for n in names}
    base = speeds.get("avx2")
    for n, s in speeds.items():
        ratios = f" (x{s['step_ms'] / base['step_ms']:.2f} step time, x{s['tokens_per_s'] / base['tokens_per_s']:.2f} sampling of avx2's)" if base else ""
        print(f"{n:8} training step {s['step_ms']:7.1f} ms, sampling {s['tokens_per_s']:8,.0f} tokens/s{ratios}  [{s['kernels']}]", flush=True)
        if base:
            summary[f"{n}_step_ratio"] = f"{s['step_ms'] / base['step_ms']:.3f}"
            summary[f"{n}_sampling_ratio"] = f"{s['tokens_per_s'] / base['tokens_per_s']:.3f}"

    if not args.speed_only:
        workdir = Path(tempfile.mkdtemp(prefix="cpu-kernels-")) if args.keep is None else args.keep
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            recipe = seeded_copy(args.recipe, args.seed, workdir / "recipe")
            tables = {n: run_recipe(recipe, n, workdir, args.jobs) for n in names}
        finally:
            if args.keep is None:
                shutil.rmtree(workdir, ignore_errors=True)
        rows = sorted({r for t in tables.values() for r in t}, key=lambda r: min(list(t).index(r) for t in tables.values() if r in t))
        print(f"\npass@1 (%) [95% interval] by setting{'' if args.seed is None else f', seed {args.seed}'}:")
        print(f"{'eval':16}" + "".join(f"{n:>22}" for n in names) + f"{'spread':>9}")
        for row in rows:
            values = [tables[n][row] for n in names if row in tables[n]]
            spread = 100 * (max(v[0] for v in values) - min(v[0] for v in values))
            cells = "".join(f"{f'{100 * t[row][0]:.1f} [{100 * t[row][1]:.1f}, {100 * t[row][2]:.1f}]':>22}" if row in t else f"{'-':>22}"
                            for t in (tables[n] for n in names))
            print(f"{row:16}{cells}{spread:9.1f}")
            summary[f"spread_{row}"] = f"{spread:.1f}"
        held = 0
        for n in names:
            broken = verdicts(tables[n])
            held += not broken
            print(f"{n}: " + ("the verdicts hold" if not broken else "; ".join(broken)))
        summary["verdicts_hold"] = f"{held}/{len(names)}"
    print(" ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
