"""Builds kube-apiserver, kube-controller-manager, kubectl and etcd from pinned Go modules.

Upstream go.mod files replace their sibling modules with local paths, which only
work inside a git checkout. We write a throwaway main module that requires the
upstream module and pins each of those siblings to its released version, then
`go build` the commands. Results are cached per (version, Go version) under
`${GRADATIM_CACHE:-~/.cache/gradatim}/bin/`; a build lands in a temp dir, gets a
marker file last and is renamed into place, so a half build is never used.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from gradatim.cluster import versions
from gradatim.cluster.errors import ClusterError
from gradatim.cluster.progress import Progress

COMPLETE_MARKER = ".complete"
KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kubectl")


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    etcd: Path
    training_operator: Path
    trainer_controller_manager: Path
    jobset_controller: Path


# The Kubeflow controllers: (cache dir name, module, version, main package, binary name).
CONTROLLERS = (
    ("training-operator", versions.TRAINING_OPERATOR_MODULE, versions.TRAINING_OPERATOR_VERSION,
     "cmd/training-operator.v1", "training-operator"),
    ("jobset", versions.JOBSET_MODULE, versions.JOBSET_VERSION, "", "jobset-controller"),
    ("kubeflow-trainer", versions.TRAINER_MODULE, versions.TRAINER_VERSION,
     "cmd/trainer-controller-manager", "trainer-controller-manager"),
)


def default_cache_dir() -> Path:
    return Path(os.environ.get("GRADATIM_CACHE") or Path.home() / ".cache" / "gradatim")


def ensure_binaries(cache_dir: Path, progress: Progress) -> Binaries:
    """Returns the cached binaries, building whichever are missing."""
    go_version = read_go_version()
    kube_dir = cache_dir / "bin" / f"kubernetes-{versions.KUBERNETES_VERSION}-{go_version}"
    etcd_dir = cache_dir / "bin" / f"etcd-{versions.ETCD_VERSION}-{go_version}"
    ensure_built(etcd_dir, build_etcd, progress, f"etcd {versions.ETCD_VERSION}")
    ensure_built(kube_dir, build_kubernetes, progress, f"Kubernetes {versions.KUBERNETES_VERSION}")
    controllers = {}
    for name, module, version, package, binary in CONTROLLERS:
        target = cache_dir / "bin" / f"{name}-{version}-{go_version}"
        ensure_built(target, lambda out, p, m=module, v=version, pkg=package, b=binary: build_command(m, v, pkg, out / b, p),
                     progress, f"{name} {version}")
        controllers[name] = target / binary
    return Binaries(
        kube_apiserver=kube_dir / "kube-apiserver",
        kube_controller_manager=kube_dir / "kube-controller-manager",
        kubectl=kube_dir / "kubectl",
        etcd=etcd_dir / "etcd",
        training_operator=controllers["training-operator"],
        trainer_controller_manager=controllers["kubeflow-trainer"],
        jobset_controller=controllers["jobset"],
    )


def ensure_helm(cache_dir: Path, progress: Progress) -> Path:
    """helm, for the chart's tests; built apart from the control plane, which never runs it."""
    target = cache_dir / "bin" / f"helm-{versions.HELM_VERSION}-{read_go_version()}"
    ensure_built(target, lambda out, p: build_command(versions.HELM_MODULE, versions.HELM_VERSION, "cmd/helm", out / "helm", p),
                 progress, f"helm {versions.HELM_VERSION}")
    return target / "helm"


def ensure_built(target: Path, build, progress: Progress, what: str) -> None:
    if (target / COMPLETE_MARKER).exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time per target; a second caller waits, then finds it done.
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / COMPLETE_MARKER).exists():
            return
        # A dir without marker, or a staging dir of a killed build, is a broken leftover.
        for leftover in (target, *target.parent.glob(f".{target.name}.*")):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            with progress.step(f"Built {what} from Go modules (cold build, takes minutes)"):
                build(staging, progress)
                (staging / COMPLETE_MARKER).write_text(f"built {time.ctime()}\n")
            staging.chmod(0o755)  # mkdtemp makes it owner-only
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def build_kubernetes(out_dir: Path, progress: Progress) -> None:
    upstream = download_module(versions.KUBERNETES_MODULE, versions.KUBERNETES_VERSION)
    go_mod = render_go_mod(
        "gradatim.local/kubernetes-build",
        Path(upstream["GoMod"]).read_text(),
        versions.KUBERNETES_MODULE,
        versions.KUBERNETES_VERSION,
        replaced_prefix="k8s.io/",
        replaced_version=versions.KUBERNETES_STAGING_VERSION,
    )
    major, minor = versions.KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    ldflags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        ldflags += [
            f"-X {package}.gitVersion={versions.KUBERNETES_VERSION}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
        ]
    packages = [f"{versions.KUBERNETES_MODULE}/cmd/{name}" for name in KUBERNETES_COMMANDS]
    go_build(go_mod, packages, " ".join(ldflags), out_dir, progress)


def build_etcd(out_dir: Path, progress: Progress) -> None:
    upstream = download_module(versions.ETCD_MODULE, versions.ETCD_VERSION)
    go_mod = render_go_mod(
        "gradatim.local/etcd-build",
        Path(upstream["GoMod"]).read_text(),
        versions.ETCD_MODULE,
        versions.ETCD_VERSION,
        replaced_prefix="go.etcd.io/etcd/",
        replaced_version=versions.ETCD_VERSION,
    )
    # The module root (server/main.go) is etcd's main package.
    go_build(go_mod, [versions.ETCD_MODULE], "-s -w", out_dir / "etcd", progress)


def build_command(module: str, version: str, package: str, output: Path, progress: Progress) -> None:
    """One command of a module that needs no replaces (the Kubeflow controllers), from a throwaway main module that
    requires it: `go install module/pkg@version` cannot be used, as it looks up the module's version list, which the
    proxy here refuses for some modules."""
    upstream = download_module(module, version)
    lines = [f"module gradatim.local/{output.name}-build", ""]
    lines += re.findall(r"^(?:go|godebug) .*$", Path(upstream["GoMod"]).read_text(), flags=re.M)
    lines += ["", f"require {module} {version}", ""]
    go_build("\n".join(lines), [f"{module}/{package}".rstrip("/")], "-s -w", output, progress)


def render_go_mod(
    name: str,
    upstream_go_mod: str,
    module: str,
    version: str,
    replaced_prefix: str,
    replaced_version: str,
) -> str:
    """A main module requiring `module`, with upstream's local replaces pinned to releases."""
    lines = [f"module {name}", ""]
    lines += re.findall(r"^(?:go|godebug) .*$", upstream_go_mod, flags=re.M)
    lines += ["", f"require {module} {version}", "", "replace ("]
    for replaced in local_replacements(upstream_go_mod):
        if replaced.startswith(replaced_prefix):
            lines.append(f"\t{replaced} => {replaced} {replaced_version}")
    lines += [")", ""]
    return "\n".join(lines)


def local_replacements(go_mod: str) -> list[str]:
    """Module paths that a go.mod replaces with a local directory (`=> ./x` or `=> ../x`)."""
    found = re.findall(r"^\s*(?:replace\s+)?(\S+)\s*=>\s*\.\.?/\S*\s*$", go_mod, flags=re.M)
    return sorted(set(found))


def go_build(go_mod: str, packages: list[str], ldflags: str, output: Path, progress: Progress) -> None:
    """Builds `packages` in a temp module; streams `go build -v` lines into progress."""
    with tempfile.TemporaryDirectory(prefix="gradatim-gobuild-") as module_dir:
        Path(module_dir, "go.mod").write_text(go_mod)
        output_arg = f"{output}/" if output.is_dir() else str(output)
        command = [go_binary(), "build", "-v", "-trimpath", "-ldflags", ldflags, "-o", output_arg, *packages]
        process = subprocess.Popen(
            command,
            cwd=module_dir,
            env=go_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        tail: deque[str] = deque(maxlen=40)
        compiled = 0
        for line in process.stdout:
            line = line.rstrip()
            tail.append(line)
            compiled += 1
            progress.update(f"{compiled} packages · {line}")
        if process.wait() != 0:
            raise ClusterError(f"go build failed ({' '.join(packages)}):\n" + "\n".join(tail))
        # Keep the resolved module files next to the binaries as provenance.
        for name in ("go.mod", "go.sum"):
            shutil.copy(Path(module_dir, name), output if output.is_dir() else output.parent)


def download_module(module: str, version: str) -> dict:
    """`go mod download -json`: the module's Dir (sources) and GoMod (go.mod file) in the cache."""
    result = subprocess.run(
        [go_binary(), "mod", "download", "-json", f"{module}@{version}"],
        cwd=tempfile.gettempdir(),
        env=go_env(),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ClusterError(f"go mod download {module}@{version} failed:\n{result.stdout}{result.stderr}")
    return json.loads(result.stdout)


def read_go_version() -> str:
    result = subprocess.run([go_binary(), "env", "GOVERSION"], capture_output=True, text=True, env=go_env())
    if result.returncode != 0 or not result.stdout.strip():
        raise ClusterError(f"`go env GOVERSION` failed: {result.stderr.strip()}")
    return result.stdout.strip()


def go_binary() -> str:
    found = shutil.which("go")
    if not found:
        raise ClusterError(
            "The Go toolchain (`go`, >= 1.24) is needed to build the control-plane binaries "
            "and to read the PyTorchJob CRD from the Go module cache; put it on PATH."
        )
    return found


def go_env() -> dict[str, str]:
    return {
        **os.environ,
        # -mod=mod lets go resolve and record go.sum for the throwaway module.
        "GOFLAGS": f"{os.environ.get('GOFLAGS', '')} -mod=mod".strip(),
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",  # never download another toolchain
        "GOWORK": "off",
    }
