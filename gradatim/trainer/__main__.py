"""`torchrun -m gradatim.trainer --spec stage.json`: parse, build, run, close; a failure ends as one line that
says why (gradatim/trainer/errors.py) and a non-zero exit."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from datetime import timedelta
from typing import Any

from gradatim.trainer import kernels

kernels.pin_cpu_kernels()  # before torch loads (runtime imports it): ATen and MKL choose their kernels once, at the first op

from gradatim.storage import s3  # noqa: E402
from gradatim.api.resolved import ResolvedStageSpec  # noqa: E402
from gradatim.api.runfiles import TrainerError  # noqa: E402
from gradatim.trainer import errors  # noqa: E402
from gradatim.trainer.report import Reporter  # noqa: E402
from gradatim.trainer.runtime import Runtime  # noqa: E402

IMPLEMENTED = ("decontaminate", "dpo", "eval", "generate", "grpo", "midtrain", "sft")
log = logging.getLogger("gradatim.trainer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradatim.trainer")
    parser.add_argument("--spec", required=True, help="the resolved stage spec (JSON) the operator wrote")
    parser.add_argument("--workdir", help="node-local scratch for inputs and caches (the pod's scratch volume)")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    try:
        spec = ResolvedStageSpec.model_validate(json.loads(open(args.spec).read()))
    except Exception as err:  # no spec, no output to write error.json under: the termination message says it
        log.exception("Could not read the stage spec %s", args.spec)
        attempt = int(os.environ.get("GRADATIM_ATTEMPT", "0") or 0)
        errors.report(TrainerError(message=f"--spec {args.spec}: cannot read the resolved stage spec: {errors.one_line(err)}; the operator and "
                                   "trainer image versions may differ", field="spec.image", kind="Unexpected", rank=rank, attempt=attempt,
                                   exit_code=errors.EXIT_CODE), None, None, rank == 0)
        return errors.EXIT_CODE
    store = s3.client(endpoint=spec.storage.endpoint, region=spec.storage.region)
    device = "cpu"
    try:
        rt = Runtime.from_env(args.workdir, timeout=timedelta(seconds=spec.process_group_timeout_seconds))
        device = str(rt.device)
        run(spec, rt, store)
    except Exception as err:
        log.exception("Stage %s/%s/%s attempt %d failed", spec.namespace, spec.pipeline, spec.stage, spec.attempt)  # the traceback, for the pod log
        errors.report(errors.classify(err, spec, rank, device), spec, store, rank == 0)
        return errors.EXIT_CODE
    return 0


def run(spec: ResolvedStageSpec, rt: Runtime, store: Any) -> None:
    if spec.type not in IMPLEMENTED:
        raise errors.ParamError("spec.image", f"stage type {spec.type} is not implemented by this trainer image (implemented: {', '.join(IMPLEMENTED)})")
    log.info("Started %s stage %s/%s/%s attempt %d on %d process(es), %s", spec.type, spec.namespace, spec.pipeline, spec.stage,
             spec.attempt, rt.world_size, rt.device)
    if rt.device.type == "cpu":
        log.info("CPU kernels: %s", kernels.describe(kernels.cpu_kernels()))
    reporter = Reporter(spec, store, enabled=rt.is_rank0, device=rt.device, world_size=rt.world_size)
    try:
        stage = importlib.import_module(f"gradatim.trainer.stages.{spec.type}")
        stage.run(spec, rt, store, reporter)
    finally:
        rt.close()
        reporter.close()


if __name__ == "__main__":
    sys.exit(main())
