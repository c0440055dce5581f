{{/* Names and labels shared by every template. */}}

{{- define "queuescaler.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name alone when it already says "queuescaler". */}}
{{- define "queuescaler.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "queuescaler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "queuescaler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "queuescaler.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "queuescaler.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: queuescaler
{{- end -}}

{{- define "queuescaler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "queuescaler.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "queuescaler.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The rules the operator needs in every namespace it serves (see operator/queuescaler/kube.py
and handlers.py): nothing more. Secrets: get by name only, never list or watch.
*/}}
{{- define "queuescaler.namespacedRules" -}}
- apiGroups: ["queuescaler.io"]
  resources: ["queuescalers"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["queuescaler.io"]
  resources: ["queuescalers/status"]
  verbs: ["patch"]
# The replica cache: one watch of Deployments instead of a GET of each target per tick.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch"]
# Scaling goes through /scale only: the operator never edits a workload object.
- apiGroups: ["apps"]
  resources: ["deployments/scale", "statefulsets/scale", "replicasets/scale"]
  verbs: ["get", "patch"]
{{- range .Values.extraScaleTargets }}
- apiGroups: [{{ .apiGroup | quote }}]
  resources: [{{ range $i, $r := .resources }}{{ if $i }}, {{ end }}{{ printf "%s/scale" $r | quote }}{{ end }}]
  verbs: ["get", "patch"]
{{- end }}
# Idle-first scale-down: the target's pods are listed (by its selector) and annotated with
# controller.kubernetes.io/pod-deletion-cost, only on ticks that may scale down.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "patch"]
# A second owner of a target (an HPA, or KEDA's) stops the QueueScaler: listed once a minute.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list"]
# Broker credentials, read by the name a QueueScaler gives.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
