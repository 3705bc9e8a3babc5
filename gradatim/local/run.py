"""`gradatim run DIR`: a recipe's TrainingPipeline and TrainingStages run on this machine, without Kubernetes.

The same YAML (`load_recipe`), the same shell and planner (`LocalRun`: gradatim/reconcile/shell.py over memory), each attempt the same
rendered PyTorchJob run as local `torchrun` processes (its pods run by the pod runner's kubelet code), the same cache keys
and S3 layout (`AWS_*` from the environment, or a SeaweedFS of its own), the same live view and the same report.

Everything a run keeps lies in its state dir, `${GRADATIM_HOME:-~/.gradatim}/runs/<namespace>/<pipeline>/`:
`status.json` (the objects with their status), `run.log` (what the runner did), `jobs/` (each pod's
`pytorch.log`, this run's only), `report/` (index.html and plots) and `s3/` (SeaweedFS, when it started one).
Exit status: 0 when the pipeline succeeded, 1 when it did not, 2 when nothing ran (bad recipe, unusable S3).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from gradatim.cluster.errors import ClusterError
from gradatim.cluster.progress import ConsoleProgress
from gradatim.local.world import FINISHED, STATUS_FILE, LocalJobs, LocalRun
from gradatim.local.recipe import Recipe, RecipeError, load_recipe
from gradatim.local.storage import Storage, StorageError, run_storage
from gradatim.local.view import clock, follow, stage_views

log = logging.getLogger("gradatim.local")

NOT_RUN = 2


def add_run_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run a recipe directory's pipeline on this machine, without Kubernetes")
    parser.add_argument("directory", type=Path, help="a directory of TrainingPipeline/TrainingStage YAML (kustomization.yaml: only its namespace is read)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="status, logs, report and SeaweedFS data (default: ${GRADATIM_HOME:-~/.gradatim}/runs/<namespace>/<pipeline>)")
    parser.add_argument("-j", "--parallel", type=int, default=1,
                        help="jobs run at once (default 1), as many as fit this machine's cores by their CPU requests; ready stages beyond it wait")
    parser.set_defaults(func=lambda args: run_recipe(args.directory, args.state_dir, args.parallel))


def default_state_dir(namespace: str, pipeline: str) -> Path:
    home = Path(os.environ.get("GRADATIM_HOME") or Path.home() / ".gradatim")
    return home / "runs" / namespace / pipeline


def run_recipe(directory: Path, state_dir: Path | None = None, parallel: int = 1, env: Mapping[str, str] | None = None) -> int:
    """Runs the recipe in `directory` until its pipeline finishes; returns the exit status."""
    try:
        recipe = load_recipe(directory)
    except RecipeError as err:
        print(f"gradatim run: {directory} is not a valid recipe; nothing was run:", file=sys.stderr)
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return NOT_RUN
    state = Path(state_dir) if state_dir else default_state_dir(recipe.namespace, recipe.name)
    with _stop_on_sigterm():
        try:
            with _exclusive(state), _run_log(state / "run.log"):
                shutil.rmtree(state / "jobs", ignore_errors=True)  # trainer logs are this run's
                for ignored in recipe.ignored:
                    log.info("Ignored %s: a local run reads only TrainingPipeline and TrainingStage", ignored)
                with run_storage(recipe.pipeline, state, ConsoleProgress(), env) as storage:
                    return run_pipeline(recipe, storage, state, max(parallel, 1))
        except (StorageError, ClusterError, BlockingIOError) as err:
            print(f"gradatim run: {err}; nothing was run", file=sys.stderr)
            return NOT_RUN
        except KeyboardInterrupt:
            print(f"gradatim run: interrupted; jobs stopped. A re-run resumes from the stages' checkpoints (state in {state})", file=sys.stderr)
            return 130


def run_pipeline(recipe: Recipe, storage: Storage, state: Path, parallel: int) -> int:
    """Plans and runs until the pipeline finishes (or nothing is left to run), showing the live view; then the
    summary and the report. Returns the exit status."""
    recipe = _with_endpoint(recipe, storage)
    ref = recipe.pipeline.spec.storage.secret_ref
    jobs = LocalJobs(state / "jobs", {ref.name: storage.secret_data(recipe.pipeline)}, parallel)
    pipeline_run = LocalRun(recipe, storage.quick_client(), jobs, state)
    _print_header(recipe, storage, state, jobs)

    def poll() -> tuple[str | None, list]:
        pipeline_run.step(datetime.now(timezone.utc))
        phase = pipeline_run.phase
        if pipeline_run.settled() and phase not in FINISHED:
            phase = "Failed"  # blocked or suspended with nothing left to run: locally, only an edit changes that
        return phase, stage_views(list(pipeline_run.stages.values()))

    started = time.monotonic()
    try:
        follow(f"TrainingPipeline {recipe.namespace}/{recipe.name} (local)", poll)
    finally:
        if jobs.running():
            log.info("Stopped %d running job(s): the run ended", jobs.running())
        jobs.stop_all()
        pipeline_run.save()
    _print_summary(pipeline_run, jobs, time.monotonic() - started)
    print(f"Report:       {write_report(pipeline_run, storage, state / 'report')}")
    print(f"Status:       {state / STATUS_FILE}")
    print(f"Trainer logs: {jobs.kubelet.workdir / recipe.namespace}")
    return 0 if pipeline_run.phase == "Succeeded" else 1


def _print_header(recipe: Recipe, storage: Storage, state: Path, jobs: LocalJobs) -> None:
    ns, spec = recipe.namespace, recipe.pipeline.spec.storage
    log.info("Started a local run of TrainingPipeline %s/%s from %s; S3 %s (%s)", ns, recipe.name, recipe.directory, storage.endpoint, storage.origin)
    print(f"Running TrainingPipeline {ns}/{recipe.name} from {recipe.directory}: {len(recipe.stages)} stage(s), {jobs.parallel} job(s) at a time\n"
          f"  S3:           {storage.endpoint} ({storage.origin}); outputs under s3://{spec.bucket}/{spec.prefix}{ns}/{recipe.name}/\n"
          f"  state:        {state} ({STATUS_FILE}, run.log)\n"
          f"  trainer logs: {jobs.kubelet.workdir}/{ns}/<job>-master-0/pytorch.log (and -worker-N)", flush=True)


def _print_summary(pipeline_run: LocalRun, jobs: LocalJobs, seconds: float) -> None:
    """The pipeline's phase, and for each stage that did not get through, why and where its logs are."""
    status = pipeline_run.pipeline.status
    print(f"\nPipeline {pipeline_run.namespace}/{pipeline_run.name}: {status.phase} ({status.progress} stages done) in {clock(seconds)}")
    for name in pipeline_run.order:
        st = pipeline_run.stages[name].status
        if st and st.phase in ("Failed", "Invalid", "Blocked", "Suspended"):
            why = next((c.message for c in st.conditions if c.type == "Ready"), "")  # Ready carries the message in every phase
            logs = jobs.logs(st.job_name) if st.job_name else None
            print(f"  {name}: {st.phase}: {why}" + (f" (logs: {logs / 'pytorch.log'})" if logs else ""))


def write_report(pipeline_run: LocalRun, storage: Storage, out: Path) -> str:
    """The report, as `gradatim report` builds it, from the stages in memory; published where that command
    publishes it. Without a timestamp, so a re-run that changed nothing gives the same page. Returns where it is."""
    from botocore.exceptions import BotoCoreError, ClientError

    from gradatim.report.build import build_report, records_from
    from gradatim.report.collect import NOTES_ANNOTATION, ReportError, publish, report_uri, results_reader
    from gradatim.report.render import render_html

    pipeline, ns = pipeline_run.pipeline, pipeline_run.namespace
    try:
        records = records_from(list(pipeline_run.stages.values()), results_reader(storage.client(), pipeline, ns))
    except ReportError as err:
        return f"not written: {err}"
    notes = (pipeline.metadata.get("annotations") or {}).get(NOTES_ANNOTATION, "")
    page = render_html(build_report(ns, pipeline_run.name, records, notes=notes), out)
    uri = report_uri(pipeline, ns)
    try:
        return f"{page}\n              {publish(storage.client(), page.parent, uri)}"
    except (BotoCoreError, ClientError) as err:
        return f"{page}\n              not published to {uri}: {err}"


def _with_endpoint(recipe: Recipe, storage: Storage) -> Recipe:
    """The pipeline with the run's S3 endpoint, where it names another: the trainer reads the endpoint from the
    resolved spec. (The endpoint is in neither the cache key nor the output URIs, so both stay as they are.)"""
    spec = recipe.pipeline.spec
    if spec.storage.endpoint in (None, storage.endpoint):
        return recipe
    print(f"  note: spec.storage.endpoint {spec.storage.endpoint} is replaced by {storage.endpoint} for this local run", flush=True)
    storage_spec = spec.storage.model_copy(update={"endpoint": storage.endpoint})
    pipeline = recipe.pipeline.model_copy(update={"spec": spec.model_copy(update={"storage": storage_spec})})
    return dataclasses.replace(recipe, pipeline=pipeline)


@contextmanager
def _exclusive(state: Path) -> Iterator[None]:
    """One run per state dir at a time: two would share SeaweedFS's data and the jobs' directories."""
    state.mkdir(parents=True, exist_ok=True)
    with open(state / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise BlockingIOError(f"another gradatim run is using {state}") from err
        yield


@contextmanager
def _run_log(path: Path) -> Iterator[None]:
    """The runner's own log lines go to a file: the terminal belongs to the live view."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("gradatim")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the run as Ctrl-C does: jobs and SeaweedFS stopped, status written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
