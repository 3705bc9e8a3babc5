"""`gradatim quickstart` (`make quickstart`): the README's main command.

Brings up the embedded control plane (its pod runner, the kubelet's stand-in, runs the pods), starts the operator next
to it, gives the pipeline its S3 credentials as a Secret, applies `examples/quickstart/` (`kubectl kustomize | kubectl
apply`), follows the pipeline stage by stage in a live view, and ends with its report (HTML and plots, also published
to S3). Interrupted (Ctrl-C, or its timeout), it suspends the pipeline before it stops the operator, so no trainer
keeps running; the next quickstart resumes it. The control plane stays up afterwards, for kubectl and Prometheus;
`gradatim cluster down` stops it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from kubernetes import client, config

from gradatim.api import TrainingStage
from gradatim.api.base import GROUP, VERSION
from gradatim.cluster.controlplane import ControlPlane
from gradatim.cluster.process import spawn, stop_groups
from gradatim.cluster.progress import ConsoleProgress
from gradatim.cluster.state import ClusterInfo
from gradatim.cluster.targets import operator_targets
from gradatim.cluster.kubelet import free_port
from gradatim.operator import kube
from gradatim.local.view import FINISHED, follow, stage_views
from gradatim.planner.render import PIPELINE_LABEL

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
S3_SECRET = "gradatim-s3"


class QuickstartError(RuntimeError):
    """A step that failed, with what the tool said."""


def render_s3_secret(info: ClusterInfo, namespace: str) -> str:
    """The Secret the example pipeline's `storage.secretRef` names, as YAML for `kubectl apply`."""
    return (
        "apiVersion: v1\nkind: Secret\n"
        f"metadata: {{name: {S3_SECRET}, namespace: {namespace}}}\n"
        "type: Opaque\nstringData:\n"
        f"  AWS_ACCESS_KEY_ID: {info.s3_access_key}\n"
        f"  AWS_SECRET_ACCESS_KEY: {info.s3_secret_key}\n"
        f"  AWS_ENDPOINT_URL: {info.s3_endpoint}\n"
    )


def example_pipeline(example: Path) -> tuple[str, str]:
    """(namespace, pipeline name) of an example directory: its kustomization's namespace, its one pipeline."""
    namespace = (yaml.safe_load((example / "kustomization.yaml").read_text()) or {}).get("namespace", "default")
    docs = [d for f in sorted(example.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    [name] = [d["metadata"]["name"] for d in docs if d.get("kind") == "TrainingPipeline"]
    return namespace, name


@contextmanager
def background(processes: dict[str, list[str]], env: dict[str, str], logs: Path) -> Iterator[None]:
    """Runs each command in its own process group, logging to `logs/<name>.log`, and stops them all on exit."""
    groups = {}
    try:
        for name, argv in processes.items():
            groups[name] = spawn(argv, logs / f"{name}.log", Path.cwd(), env)
        yield
    finally:
        stop_groups(groups, grace_seconds=20)


def as_applied(rendered: str, backend: str | None = None) -> str:
    """The recipe's YAML (`kubectl kustomize` output) as the quickstart applies it: its TrainingPipeline's
    `spec.suspend` said outright (false unless the recipe says otherwise), so that applying it resumes a pipeline
    an interrupted quickstart suspended, and `spec.backend` set when one is asked for."""
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:
        if doc.get("kind") == "TrainingPipeline":
            doc["spec"].setdefault("suspend", False)
            if backend:
                doc["spec"]["backend"] = backend
    return yaml.safe_dump_all(docs, sort_keys=False)


def suspend_pipeline(api, namespace: str, pipeline: str, progress: ConsoleProgress, wait_seconds: float = 30) -> None:
    """Suspends the pipeline before the operator stops, and waits until no stage runs: its running job is suspended
    and the pod runner stops its trainers. The next quickstart resumes it (from the stage's checkpoint)."""
    custom = client.CustomObjectsApi(api)
    with progress.step(f"Suspended TrainingPipeline {namespace}/{pipeline}: no trainer left running (the next quickstart resumes it)"):
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "trainingpipelines", pipeline, {"spec": {"suspend": True}})
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            stages = [kube.parse_stage(b) for b in kube.list_stages(api, namespace) if b.get("spec", {}).get("pipeline") == pipeline]
            pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"{PIPELINE_LABEL}={pipeline}").items
            live = [p for p in pods if p.status.phase not in ("Succeeded", "Failed")]  # a finished stage's pods stay
            if not live and not any(s.status and s.status.phase in ("Running", "Retrying") for s in stages):
                return
            time.sleep(0.5)
        raise QuickstartError(f"TrainingPipeline {namespace}/{pipeline} still ran {wait_seconds:g}s after it was suspended; "
                              f"see {namespace}'s stages with kubectl, or stop everything with `gradatim cluster down`")


def run_quickstart(state_dir: str | None = None, example: Path | None = None, timeout: float | None = None,
                   backend: str | None = None) -> int:
    """`backend`: run every stage as this Kubeflow job kind (`pytorchjob` or `trainjob`) instead of what the
    recipe says (`auto`: PyTorchJob, as the embedded control plane serves both)."""
    example = (example or EXAMPLE).resolve()
    progress = ConsoleProgress()
    info = ControlPlane(state_dir).up(progress)
    namespace, pipeline = example_pipeline(example)

    def kubectl(*args: str, stdin: str | None = None) -> str:
        cmd = [str(info.kubectl), f"--kubeconfig={info.kubeconfig}", *args]
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
        if done.returncode:
            raise QuickstartError(f"kubectl {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    # SIGTERM as Ctrl-C: unwind, so the pipeline is suspended and the operator stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    metrics_port = free_port()
    env = {**os.environ, "KUBECONFIG": str(info.kubeconfig), "GRADATIM_OPERATOR_METRICS_PORT": str(metrics_port)}
    python = [sys.executable, "-m", "gradatim"]
    logs = info.state_dir / "logs"
    processes = {"operator": [*python, "operator", "-n", namespace, "--liveness", ""]}
    with background(processes, env, logs):
        operator_targets(info.prometheus_sd_dir, "quickstart", metrics_port)
        progress.info(f"Operator started (log: {logs}/operator.log); the cluster's pod runner runs the pods "
                      f"(trainer logs under {info.state_dir / 'pods'})")
        with progress.step(f"Created Secret {S3_SECRET} with the embedded S3 credentials"):
            namespace_yaml = f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n---\n"
            kubectl("apply", "-f", "-", stdin=namespace_yaml + render_s3_secret(info, namespace))
        title = f"Applied {example} (kubectl kustomize | kubectl apply -f -)" + (f", the pipeline's spec.backend set to {backend}" if backend else "")
        with progress.step(title):
            rendered = as_applied(kubectl("kustomize", str(example)), backend)
            kubectl("apply", "-f", "-", "--dry-run=server", stdin=rendered)  # all or nothing: no half-applied recipe
            print(kubectl("apply", "-f", "-", stdin=rendered), end="")
        api = config.new_client_from_config(config_file=str(info.kubeconfig))
        try:
            phase = follow(f"TrainingPipeline {namespace}/{pipeline}", lambda: poll(api, namespace, pipeline), timeout=timeout)
        except BaseException:  # Ctrl-C or SIGTERM
            suspend_pipeline(api, namespace, pipeline, progress)
            raise
        if phase not in FINISHED:  # the timeout
            suspend_pipeline(api, namespace, pipeline, progress)
    report = write_report(api, namespace, pipeline, info.state_dir / "reports" / pipeline)
    api.close()
    print(f"\nPipeline {namespace}/{pipeline}: {phase}")
    print(f"Report:     {report}")
    print(f"Prometheus: {info.prometheus_url}/graph?g0.expr=gradatim_stage_phase%3D%3D1")
    print(f"kubectl:    KUBECONFIG={info.kubeconfig} kubectl get trainingstages -o wide")
    return 0 if phase == "Succeeded" else 1


def poll(api, namespace: str, pipeline: str):
    """(pipeline phase, stage views) as the API server has them now."""
    body = kube.get_pipeline(api, namespace, pipeline)
    stages = [kube.parse_stage(b) for b in kube.list_stages(api, namespace) if b.get("spec", {}).get("pipeline") == pipeline]
    return current_phase(body, stages), stage_views(stages)


def current_phase(pipeline_body: dict | None, stages: list[TrainingStage]) -> str | None:
    """The pipeline's phase once its status has caught up with the specs; "Running" until then. Right after
    `kubectl apply` changes a stage, the pipeline still says Succeeded until the operator has been round. (A stage
    downstream of the change keeps its generation; the pipeline's status counts it done only under its new key.)"""
    status = (pipeline_body or {}).get("status") or {}
    phase = status.get("phase")
    if phase not in FINISHED:
        return phase
    if status.get("observedGeneration") != (pipeline_body or {}).get("metadata", {}).get("generation"):
        return "Running"
    for stage in stages:
        st = stage.status
        if st is None or st.observed_generation != stage.metadata.get("generation") or st.phase in ("Running", "Retrying"):
            return "Running"
    return phase


def write_report(api, namespace: str, pipeline: str, out: Path) -> str:
    """Renders the report and publishes it next to the outputs; without a timestamp, so a re-run that changed
    nothing gives the same page."""
    from gradatim.report.collect import collect_report, publish
    from gradatim.report.render import render_html

    collected = collect_report(api, namespace, pipeline, None)
    page = render_html(collected.report, out)
    return f"{page}\n            {publish(collected.store, page.parent, collected.uri)}"
