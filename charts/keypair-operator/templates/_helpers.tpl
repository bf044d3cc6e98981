{{/* Full name of the release's objects. */}}
{{- define "keypair-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "keypair-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "keypair-operator.labels" -}}
{{ include "keypair-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "keypair-operator.serviceAccountName" -}}
{{- default (include "keypair-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "keypair-operator.leaderElect" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}

{{/* Rules on the operator's own resources and Secrets: the same in both RBAC modes. */}}
{{- define "keypair-operator.namespacedRules" -}}
- apiGroups: [keypairs.dev]
  resources: [apikeypairs]
  verbs: [get, list, watch, patch]
- apiGroups: [keypairs.dev]
  resources: [apikeypairs/status]
  verbs: [get, patch]
- apiGroups: [keypairs.dev]
  resources: [keypairproviders]
  verbs: [get, list, watch]
- apiGroups: [keypairs.dev]
  resources: [keypairproviders/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- if .Values.rbac.rolloutRestart }}
# spec.rolloutRestartTargets: stamp the pod template, as `kubectl rollout restart` does.
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets]
  verbs: [get, patch]
{{- end }}
{{- end -}}

{{/* Cluster-scoped reads every mode needs (no Secrets). */}}
{{- define "keypair-operator.clusterRules" -}}
- apiGroups: [keypairs.dev]
  resources: [clusterkeypairproviders]
  verbs: [get, list, watch]
- apiGroups: [keypairs.dev]
  resources: [clusterkeypairproviders/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
{{- end -}}
