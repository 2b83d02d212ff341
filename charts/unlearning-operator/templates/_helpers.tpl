{{- define "unlearning-operator.fullname" -}}
{{- printf "%s" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "unlearning-operator.labels" -}}
app.kubernetes.io/name: unlearning-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "unlearning-operator.selectorLabels" -}}
app.kubernetes.io/name: unlearning-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "unlearning-operator.namespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- join "," .Values.watchNamespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The rules the operator needs in every namespace it watches; tests compare them with its API calls. */}}
{{- define "unlearning-operator.namespacedRules" -}}
- apiGroups: [unlearning.dev]
  resources: [unlearningjobs]
  verbs: [get, list, watch, patch]
- apiGroups: [unlearning.dev]
  resources: [unlearningjobs/status]
  verbs: [patch]
- apiGroups: [unlearning.dev]
  resources: [unlearningjobs/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, watch, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps, serviceaccounts]
  verbs: [create, get]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Kueue: suspend and resume a queued job through its Workload (nothing happens where Kueue is not installed).
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list, patch]
{{- end -}}
