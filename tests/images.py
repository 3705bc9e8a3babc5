"""The shipped images, built and run by the tests with podman: a Debian base made here with mmdebstrap (no container
registry is reachable), the operator image built on it from images/operator/Dockerfile (cached by content), and the
operator's container run with its Deployment's own settings, as a kubelet would.

podman runs as root here with runc (crun refuses this VM's cgroup mode) and low default ulimits (the VM forbids
raising them); both come from a containers.conf of the tests' own, not the machine's.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from gradatim.cluster.build import default_cache_dir
from gradatim.cluster.kubelet import expand, free_port

REPO = Path(__file__).resolve().parents[1]
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def podman_env() -> dict[str, str]:
    conf = default_cache_dir() / "podman" / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    out = subprocess.run(["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} ... failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return out


def image_exists(tag: str) -> bool:
    return podman("image", "exists", tag, check=False).returncode == 0


def debian_base() -> str:
    """A Python base image from Debian packages, what `python:3.11-slim` is elsewhere; built once per recipe."""
    recipe = f"mmdebstrap --variant=minbase --include={','.join(BASE_PACKAGES)} {DEBIAN_SUITE}"
    tag = f"localhost/gradatim-test-base:{DEBIAN_SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    if image_exists(tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="gradatim-base-") as work:
        rootfs = Path(work) / "rootfs.tar"
        subprocess.run([*recipe.split(), str(rootfs)], check=True, capture_output=True, timeout=900)
        podman("import", "--change", 'CMD ["python3"]', str(rootfs), tag)
    return tag


def content_hash(*paths: Path) -> str:
    """Over every file the build copies (the .dockerignore keeps the rest out), and the Dockerfile itself."""
    digest = hashlib.sha256()
    files = sorted(p for path in paths for p in ([path] if path.is_file() else path.rglob("*"))
                   if p.is_file() and "__pycache__" not in p.parts)
    for file in files:
        digest.update(str(file.relative_to(REPO)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:12]


def build_args_for_this_machine() -> list[str]:
    """pip inside the build reaches PyPI here only with the machine's CA bundle and pip config; they are mounted
    into the build, never written into the Dockerfiles."""
    mounts = ["--network=host"]
    for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf"):
        if Path(path).exists():
            mounts += ["-v", f"{path}:{path}:ro"]
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_CERT"):
        if key in os.environ:
            mounts += ["--build-arg", f"{key}={os.environ[key]}"]
    return mounts


def build_image(name: str, base: str, log: Path, **build_args: str) -> tuple[str, float]:
    """images/<name>/Dockerfile built from `base`, tagged by the content it copies; returns (tag, seconds built)."""
    dockerfile = REPO / "images" / name / "Dockerfile"
    key = content_hash(dockerfile, REPO / ".dockerignore", REPO / "pyproject.toml", REPO / "README.md", REPO / "gradatim")
    key = hashlib.sha256(f"{key} {base} {sorted(build_args.items())}".encode()).hexdigest()[:12]
    tag = f"localhost/gradatim-{name}:test-{key}"
    if image_exists(tag):
        return tag, 0.0
    started = time.monotonic()
    argv = ["build", *build_args_for_this_machine(), "--build-arg", f"BASE={base}", "-f", str(dockerfile), "-t", tag]
    for k, v in build_args.items():
        argv += ["--build-arg", f"{k}={v}"]
    out = podman(*argv, str(REPO), check=False)
    log.write_text(out.stdout + out.stderr)
    assert out.returncode == 0, f"building images/{name} failed; log: {log}\n{out.stderr[-3000:]}"
    seconds = time.monotonic() - started
    # Earlier builds of this image (older code) are never used again.
    for old in podman("images", "--format", "{{.Repository}}:{{.Tag}}", f"localhost/gradatim-{name}").stdout.split():
        if old != tag and ":test-" in old:
            podman("rmi", "-f", old, check=False)
    return tag, seconds


def image_size_mb(tag: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()) / 1e6


def service_account_files(directory: Path, token: str, kubeconfig: Path, namespace: str) -> Path:
    """What the kubelet projects at /var/run/secrets/kubernetes.io/serviceaccount: token, ca.crt, namespace."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    config = yaml.safe_load(kubeconfig.read_text())
    ca = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
    for name, data in (("token", token.encode()), ("ca.crt", ca), ("namespace", namespace.encode())):
        (directory / name).write_bytes(data)
        (directory / name).chmod(0o644)
    return directory


def podman_run_argv(deployment: dict[str, Any], image: str, name: str, namespace: str, account_dir: Path,
                    api_server: str) -> tuple[list[str], dict[str, int]]:
    """`podman run` for the Deployment's first container as a kubelet would start it: its command with `$(VAR)`
    expanded, its env (downward API included), its securityContext, its emptyDir volumes, the ServiceAccount's
    files and the in-cluster API server variables. The container shares the host's network (the API server
    listens on loopback), so each containerPort is moved to a free host port; returns the argv and that map."""
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["containerPort"]: free_port() for p in container.get("ports", [])}
    by_name = {p["name"]: ports[p["containerPort"]] for p in container.get("ports", []) if "name" in p}
    pod_name = f"{deployment['metadata']['name']}-0"
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "valueFrom" in var:
            field = var["valueFrom"]["fieldRef"]["fieldPath"]
            env[var["name"]] = {"metadata.name": pod_name, "metadata.namespace": namespace}[field]
        else:
            value = expand(var["value"], env)
            env[var["name"]] = str(ports.get(int(value), value)) if value.isdigit() else value
    host, port = api_server.removeprefix("https://").rsplit(":", 1)
    env.update(KUBERNETES_SERVICE_HOST=host, KUBERNETES_SERVICE_PORT=port)
    command = [expand(a, env) for a in container["command"]]
    for inside, outside in ports.items():
        command = [a.replace(f":{inside}/", f":{outside}/") for a in command]
    sc = container.get("securityContext", {})
    argv = ["run", "--rm", "--name", name, "--network=host", "--passwd=false", "--entrypoint", command[0]]
    if sc.get("runAsUser") is not None:
        argv += ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
    if sc.get("readOnlyRootFilesystem"):
        argv += ["--read-only", "--read-only-tmpfs=false"]  # only what the pod mounts is writable
    if "ALL" in (sc.get("capabilities") or {}).get("drop", []):
        argv += ["--cap-drop=all"]
    if sc.get("allowPrivilegeEscalation") is False:
        argv += ["--security-opt=no-new-privileges"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        assert "emptyDir" in volume, f"volume {mount['name']}: only emptyDir is run here"
        argv += ["--mount", f"type=tmpfs,destination={mount['mountPath']},tmpfs-mode=1777"]
    argv += ["-v", f"{account_dir}:{SERVICE_ACCOUNT_DIR}:ro"]
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    return [*argv, image, *command[1:]], by_name

