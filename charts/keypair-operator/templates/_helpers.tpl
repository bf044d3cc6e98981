{{/* Name of the chart, or nameOverride. */}}
{{- define "keypair-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the release's objects: fullnameOverride, or release + name. */}}
{{- define "keypair-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "keypair-operator.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "keypair-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keypair-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object: selector labels, chart metadata and commonLabels. */}}
{{- define "keypair-operator.labels" -}}
{{ include "keypair-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The image reference: repository@digest when a digest is set, else repository:tag. */}}
{{- define "keypair-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "keypair-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "keypair-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
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

{{- /*
Removes every `x-kubernetes-validations` (CEL rules) from a parsed schema, in place. For
API servers before 1.25, which do not enforce the rules: 1.20 to 1.22 do not know the field,
and Helm's (and kubectl's) client-side validation refuses a CRD that has it.
*/ -}}
{{- define "keypair-operator.dropCelRules" -}}
{{- if kindIs "map" . }}
{{- $_ := unset . "x-kubernetes-validations" }}
{{- range $_, $v := . }}{{ include "keypair-operator.dropCelRules" $v }}{{ end }}
{{- else if kindIs "slice" . }}
{{- range . }}{{ include "keypair-operator.dropCelRules" . }}{{ end }}
{{- end }}
{{- end }}
