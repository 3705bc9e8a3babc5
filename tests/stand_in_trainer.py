"""A stand-in for `gradatim.trainer` in the operator's tests, run by the pod runner for the test image
`gradatim/stand-in-trainer:test`. It honours the trainer's contract without training anything: reads the
resolved stage spec, checks every input URI exists in S3, resumes from its checkpoint, reports progress, and
writes outputs and then results.json (last, so results appear only when the run is complete).

Test knobs, from the stage's `spec.env`: STAND_IN_STEPS, STAND_IN_STEP_SECONDS, STAND_IN_FAIL_ATTEMPTS (fail
attempts up to this number at step 2), STAND_IN_METRICS (JSON of headline metrics), STAND_IN_KILL (at step 2, SIGKILL:
`container` kills torchrun and this worker, as a cgroup's OOM killer does with memory.oom.group; `worker` only this
process, as the OOM killer choosing one process does).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from gradatim.storage import s3


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--workdir")  # the pod's scratch volume, as the real trainer takes it
    spec = json.load(open(parser.parse_args().spec))
    if os.environ.get("RANK", "0") != "0":  # one writer: rank 0
        return 0
    store = s3.client()
    out = spec["output"]["uri"]
    for source in [spec["inputs"]["model"], *spec["inputs"]["data"], *spec["inputs"]["evalData"]]:
        if source and source.get("producedBy"):
            loc = s3.S3Location.parse(source["uri"])
            listed = store.list_objects_v2(Bucket=loc.bucket, Prefix=loc.key, MaxKeys=1)
            if not listed.get("KeyCount"):
                print(f"input {source['uri']} is empty", file=sys.stderr)
                return 3
    steps = int(os.environ.get("STAND_IN_STEPS", "3"))
    pause = float(os.environ.get("STAND_IN_STEP_SECONDS", "0.2"))
    fail_attempts = int(os.environ.get("STAND_IN_FAIL_ATTEMPTS", "0"))
    checkpoint = s3.read_json(store, spec["output"]["checkpointUri"] + "state.json") or {"step": 0}
    start = checkpoint["step"]
    print(f"stage {spec['stage']} attempt {spec['attempt']}: resuming at step {start} of {steps}", flush=True)
    for step in range(start + 1, steps + 1):
        time.sleep(pause)
        if step == 2 and os.environ.get("STAND_IN_KILL") == "container":
            os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)  # torchrun leads the container's process group
        if step == 2 and os.environ.get("STAND_IN_KILL"):
            os.kill(os.getpid(), signal.SIGKILL)  # torchrun starts each worker in a session of its own
        if step == 2 and spec["attempt"] <= fail_attempts:
            print("failing on purpose", file=sys.stderr, flush=True)
            return 1
        s3.write_json(store, spec["output"]["checkpointUri"] + "state.json", {"step": step})
        s3.write_json(store, out + "progress.json", {"step": step, "totalSteps": steps, "etaSeconds": (steps - step) * pause,
                                                    "checkpointUri": spec["output"]["checkpointUri"]})
    name = {"generate": "traces", "decontaminate": "data", "eval": "results"}.get(spec["type"], "model")
    s3.write_json(store, out + f"{name}/part-0.json", {"stage": spec["stage"], "resumedAt": start})
    metrics = {"train_loss": 1.0, **json.loads(os.environ.get("STAND_IN_METRICS", "{}"))}
    s3.write_json(store, out + "results.json", {"metrics": metrics, "outputs": {name: out + name + "/"}, "resumedAt": start})
    return 0


if __name__ == "__main__":
    sys.exit(main())
