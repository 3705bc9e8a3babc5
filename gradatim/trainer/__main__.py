"""`torchrun -m gradatim.trainer --spec stage.json`: parse, build, run, close."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from datetime import timedelta

from gradatim import s3
from gradatim.api.resolved import ResolvedStageSpec
from gradatim.trainer.report import Reporter
from gradatim.trainer.runtime import Runtime

IMPLEMENTED = ("decontaminate", "dpo", "eval", "generate", "grpo", "midtrain", "sft")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradatim.trainer")
    parser.add_argument("--spec", required=True, help="the resolved stage spec (JSON) the operator wrote")
    parser.add_argument("--workdir", help="node-local scratch for inputs and caches (the pod's scratch volume)")
    args = parser.parse_args(argv)
    spec = ResolvedStageSpec.model_validate(json.loads(open(args.spec).read()))
    rt = Runtime.from_env(args.workdir, timeout=timedelta(seconds=spec.process_group_timeout_seconds))
    logging.basicConfig(level=logging.INFO if rt.is_rank0 else logging.WARNING,
                        format=f"%(asctime)s rank{rt.rank} %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("gradatim.trainer")
    if spec.type not in IMPLEMENTED:
        log.error("Stage type %s is not implemented by this trainer yet (implemented: %s)", spec.type, ", ".join(IMPLEMENTED))
        return 2
    log.info("Started %s stage %s/%s/%s attempt %d on %d process(es), %s", spec.type, spec.namespace, spec.pipeline, spec.stage,
             spec.attempt, rt.world_size, rt.device)
    store = s3.client(endpoint=spec.storage.endpoint, region=spec.storage.region)
    reporter = Reporter(spec, store, enabled=rt.is_rank0, device=rt.device, world_size=rt.world_size)
    try:
        stage = importlib.import_module(f"gradatim.trainer.stages.{spec.type}")
        stage.run(spec, rt, store, reporter)
    finally:
        rt.close()
        reporter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
