"""Pinned versions of everything the embedded control plane builds or reads.

One place to bump. Binaries are built from Go modules (only the Go module proxy
is reachable), so each pin is a module version.
"""

KUBERNETES_VERSION = "v1.34.4"
"""k8s.io/kubernetes; kube-apiserver, kube-controller-manager and kubectl come from it."""

KUBERNETES_STAGING_VERSION = "v0.34.4"
"""The k8s.io/* staging modules (client-go, apimachinery, ...) released with KUBERNETES_VERSION."""

ETCD_VERSION = "v3.6.5"
"""go.etcd.io/etcd/server/v3; its root package is the etcd main."""

TRAINING_OPERATOR_VERSION = "v1.9.3"
"""github.com/kubeflow/training-operator: the Kubeflow v1 controller (PyTorchJob), its CRD and webhook."""

TRAINER_VERSION = "v2.3.0"
"""github.com/kubeflow/trainer/v2: Kubeflow Trainer v2 (TrainJob, ClusterTrainingRuntime). Its API changes between
minor versions (podSpecOverrides -> podTemplateOverrides -> runtimePatches); 2.3 has runtimePatches."""

JOBSET_VERSION = "v0.12.0"
"""sigs.k8s.io/jobset: the JobSet controller Trainer v2 runs its nodes on (the version the trainer's go.mod requires)."""

HELM_VERSION = "v3.21.4"
"""helm.sh/helm/v3: the tests lint and template the chart in charts/gradatim with it (not needed to run a cluster)."""

KUBERNETES_MODULE = "k8s.io/kubernetes"
ETCD_MODULE = "go.etcd.io/etcd/server/v3"
TRAINING_OPERATOR_MODULE = "github.com/kubeflow/training-operator"
PYTORCHJOB_CRD_PATH = "manifests/base/crds/kubeflow.org_pytorchjobs.yaml"
TRAINER_MODULE = "github.com/kubeflow/trainer/v2"
TRAINER_CRDS_DIR = "manifests/base/crds"
JOBSET_MODULE = "sigs.k8s.io/jobset"
JOBSET_CRD_PATH = "config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml"
HELM_MODULE = "helm.sh/helm/v3"
