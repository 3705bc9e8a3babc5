{{/* The labels every object of the chart carries besides its own: Helm's recommended ones. */}}
{{- define "gradatim.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The namespaces the namespaced install watches. */}}
{{- define "gradatim.watchNamespaces" -}}
{{- if .Values.watchNamespaces }}{{ toJson .Values.watchNamespaces }}{{ else }}{{ toJson (list .Release.Namespace) }}{{ end -}}
{{- end -}}

{{/* The operator's rules on namespaced objects, shared by the ClusterRole (cluster-wide) and the Roles (namespaced). */}}
{{- define "gradatim.operatorRules" -}}
- apiGroups: [gradatim.io]
  resources: [trainingstages, trainingpipelines]
  verbs: [get, list, watch, patch]
- apiGroups: [gradatim.io]
  resources: [trainingstages/status, trainingpipelines/status]
  verbs: [get, patch, update]
- apiGroups: [kubeflow.org]
  resources: [pytorchjobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [trainer.kubeflow.org]
  resources: [trainjobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch, list]
{{- end -}}

{{- define "gradatim.workspaceRules" -}}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create]
{{- end -}}

{{/* A generated monitoring object (files/monitoring, copies of manifests/monitoring/), put in the release's
namespace with the kube-prometheus-stack release label; read with .Files.Get, so Prometheus's own {{ }} stay. */}}
{{- define "gradatim.monitoringObject" -}}
{{- $root := index . 0 -}}
{{- $obj := $root.Files.Get (index . 1) | fromYaml -}}
{{- $_ := set $obj.metadata "namespace" $root.Release.Namespace -}}
{{- $labels := merge (include "gradatim.helmLabels" $root | fromYaml) $obj.metadata.labels -}}
{{- if hasKey $obj.metadata.labels "release" }}{{ $_ := set $labels "release" $root.Values.monitoring.release }}{{ end -}}
{{- $_ := set $obj.metadata "labels" $labels -}}
{{- if and $obj.spec (hasKey $obj.spec "namespaceSelector") (hasKey $obj.spec.namespaceSelector "matchNames") -}}
{{- $_ := set $obj.spec.namespaceSelector "matchNames" (list $root.Release.Namespace) -}}
{{- end -}}
{{ toYaml $obj }}
{{- end -}}
