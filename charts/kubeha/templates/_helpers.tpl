{{/* The chart's name, shortened to what a label value may hold. */}}
{{- define "kubeha.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every namespaced resource: "<release>-kubeha", or the release name when it says kubeha. */}}
{{- define "kubeha.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on every resource of the release. */}}
{{- define "kubeha.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "kubeha.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component (pass a dict with "ctx" and "component"). */}}
{{- define "kubeha.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeha.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kubeha.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "kubeha.operatorName" -}}
{{- printf "%s-operator" (include "kubeha.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubeha.agentName" -}}
{{- printf "%s-agent" (include "kubeha.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The security context both containers share: nothing but what the agent adds back. */}}
{{- define "kubeha.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
seccompProfile:
  type: RuntimeDefault
{{- end }}
