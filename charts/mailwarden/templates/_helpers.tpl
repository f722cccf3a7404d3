{{/* Name prefix of every object. */}}
{{- define "mailwarden.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mailwarden.selectorLabels" -}}
app.kubernetes.io/name: mailwarden-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mailwarden.labels" -}}
{{ include "mailwarden.selectorLabels" . }}
app.kubernetes.io/part-of: mailwarden
app.kubernetes.io/component: operator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "mailwarden.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "mailwarden.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mailwarden.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mailwarden.webhookService" -}}
{{- printf "%s-webhook" (include "mailwarden.fullname" .) -}}
{{- end -}}

{{- define "mailwarden.webhookSecret" -}}
{{- .Values.webhook.tls.existingSecret | default (printf "%s-webhook-tls" (include "mailwarden.fullname" .)) -}}
{{- end -}}

{{/* "true" when cert-manager issues the webhook certificate. */}}
{{- define "mailwarden.certManager" -}}
{{- $mode := toString .Values.webhook.certManager.enabled -}}
{{- if and (not .Values.webhook.tls.existingSecret) (or (eq $mode "true") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "cert-manager.io/v1"))) -}}
true
{{- end -}}
{{- end -}}

{{/* "true" when a ServiceMonitor is rendered for the operator. */}}
{{- define "mailwarden.serviceMonitor" -}}
{{- $mode := toString .Values.metrics.serviceMonitor.enabled -}}
{{- if or (eq $mode "true") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor")) -}}
true
{{- end -}}
{{- end -}}
