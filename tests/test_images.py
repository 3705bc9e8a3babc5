"""The images as shipped, built with podman from a Debian base made here (no registry is reachable; the Dockerfiles
take the base as a build argument): the operator image holds only what the operator needs, and runs from its image
as its Deployment says (in-cluster config from its ServiceAccount token, read-only root filesystem, uid 65532 with
no passwd entry, its liveness probe) and reconciles a pipeline.

The trainer image is built to the point of importing gradatim.trainer and torch: with EXTRAS empty it installs the
package and the core dependencies, and torch comes from this machine's venv, mounted read-only. Its full build
(EXTRAS=trainer,vllm: torch, CUDA libraries and vLLM, about 7 GB) would download and write gigabytes on every run.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import images
from tests.operator_harness import running_harness

ABSENT_FROM_OPERATOR = ("torch", "transformers", "trl", "datasets", "vllm", "pytest", "celpy", "re2", "rich", "cryptography", "matplotlib")
PRESENT_IN_OPERATOR = ("kopf", "kubernetes", "boto3", "pydantic", "prometheus_client", "gradatim.operator.handlers")


@pytest.fixture(scope="module")
def base() -> str:
    return images.debian_base()


@pytest.fixture(scope="module")
def operator_image(base, tmp_path_factory) -> str:
    tag, seconds = images.build_image("operator", base, tmp_path_factory.mktemp("build") / "operator.log")
    print(f"\noperator image {tag}: {images.image_size_mb(tag):.0f} MB (base {images.image_size_mb(base):.0f} MB), "
          f"built in {seconds:.0f} s ({'cached' if not seconds else 'fresh'})")
    return tag


def in_image(image: str, *command: str, user: str = "65532:65532") -> str:
    return images.podman("run", "--rm", "--network=none", "--passwd=false", "--read-only", "--user", user,
                         "--entrypoint", command[0], image, *command[1:]).stdout


def test_the_operator_image_holds_only_what_the_operator_needs(operator_image, base):
    modules = ABSENT_FROM_OPERATOR + PRESENT_IN_OPERATOR
    script = ("import importlib.util, json, shutil; print(json.dumps({'weed': shutil.which('weed'), "
              f"**{{m: importlib.util.find_spec(m) is not None for m in {list(modules)!r}}}}}))")
    found = json.loads(in_image(operator_image, "python", "-c", script))
    assert found.pop("weed") is None, "SeaweedFS's binary is for local runs"
    assert [m for m in ABSENT_FROM_OPERATOR if found[m]] == []
    assert [m for m in PRESENT_IN_OPERATOR if not found[m]] == []
    unavailable = images.podman("run", "--rm", "--network=none", operator_image, "--help", check=False)
    assert unavailable.returncode == 0 and unavailable.stdout.startswith("usage: gradatim operator")  # the entrypoint
    local_only = images.podman("run", "--rm", "--network=none", "--entrypoint", "gradatim", operator_image, "cluster", "up", check=False)
    assert local_only.returncode == 2 and "pip install 'gradatim[local]'" in local_only.stderr, local_only.stderr
    added = images.image_size_mb(operator_image) - images.image_size_mb(base)
    assert added < 300, f"the operator adds {added:.0f} MB to its base (was 390 MB of pip layer with torch-side extras)"


def test_the_operator_runs_from_its_image_as_its_deployment_says(cluster, kube, tmp_path, operator_image):
    with running_harness(cluster, kube, tmp_path, "img", install="namespaced", image=operator_image) as h:
        deadline = time.monotonic() + 90
        while True:  # the Deployment's liveness probe, as the kubelet would call it
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{h.liveness_port}/healthz", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"liveness never answered\n{h.operator_log()}"
            time.sleep(1)
        [inspect] = json.loads(images.podman("inspect", h.container_name).stdout)
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True and inspect["Config"]["User"] == "65532:65532"
        probe = ("import os, pwd, json\ntry: pwd.getpwuid(os.getuid()); named = True\nexcept KeyError: named = False\n"
                 "try: open('/opt/x', 'w'); writable = True\nexcept OSError: writable = False\n"
                 "print(json.dumps({'uid': os.getuid(), 'named': named, 'root_writable': writable, "
                 "'kubeconfig': os.environ.get('KUBECONFIG'), 'token': os.path.exists('/var/run/secrets/kubernetes.io/serviceaccount/token')}))")
        seen = json.loads(images.podman("exec", h.container_name, "python", "-c", probe).stdout)
        assert seen == {"uid": 65532, "named": False, "root_writable": False, "kubeconfig": None, "token": True}
        h.pipeline("p")
        h.stage("train", "p")
        h.stage("eval", "p", "eval", deps=("train",), env={"STAND_IN_METRICS": '{"pass@1": 0.9}'})
        h.wait_phase("eval", "Succeeded", timeout=240)
        assert "gradatim_stage_phase" in h.metrics()
        assert "Traceback" not in h.operator_log(), h.operator_log()


def test_the_trainer_image_builds_and_imports_the_trainer_with_torch(base, tmp_path):
    tag, seconds = images.build_image("trainer", base, tmp_path / "trainer.log", EXTRAS="")
    site = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "torch").is_dir())
    script = "import torch, gradatim.trainer.__main__ as m, getpass; print(torch.__version__, getpass.getuser(), m.__file__)"
    out = images.podman("run", "--rm", "--network=none", "-v", f"{site}:/opt/host-site:ro", "-e", "PYTHONPATH=/opt/host-site",
                        "--entrypoint", "python", tag, "-c", script).stdout.split()
    import torch

    assert out[0] == torch.__version__ and out[1] == "trainer" and out[2].startswith("/opt/venv/"), out
