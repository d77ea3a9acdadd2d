{{/*
Names and labels, after `helm create`'s conventions.
*/}}
{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "berth.fullname" -}}
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

{{- define "berth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; (dict "ctx" $ "component" "api") */}}
{{- define "berth.labels" -}}
helm.sh/chart: {{ include "berth.chart" .ctx }}
{{ include "berth.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: berth
{{- end }}

{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "berth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "berth.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, the tag defaulting to the chart's appVersion; (dict "image" ... "ctx" $ "suffix" "") */}}
{{- define "berth.image" -}}
{{- printf "%s:%s%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) (default "" .suffix) }}
{{- end }}

{{- define "berth.apiImage" -}}
{{- $suffix := ternary .Values.api.gpu.tagSuffix "" .Values.api.gpu.enabled }}
{{- include "berth.image" (dict "image" .Values.api.image "ctx" . "suffix" $suffix) }}
{{- end }}

{{/*
The security settings of every pod and container, not values: Berth's images run as uid 10001,
write only to their volumes, and need no capability and no service account token.
*/}}
{{- define "berth.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "berth.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
What every Berth process reads (berth_common.settings.CommonSettings): where PostgreSQL and Redis
are, their passwords from the existing Secrets, and how to log.
*/}}
{{- define "berth.commonEnv" -}}
- name: POSTGRES_HOST
  value: {{ .Values.postgresql.host | quote }}
- name: POSTGRES_PORT
  value: {{ .Values.postgresql.port | quote }}
- name: POSTGRES_DB
  value: {{ .Values.postgresql.database | quote }}
- name: POSTGRES_USER
  value: {{ .Values.postgresql.user | quote }}
- name: POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.postgresql.existingSecret | quote }}
      key: {{ .Values.postgresql.passwordKey | quote }}
- name: REDIS_HOST
  value: {{ .Values.redis.host | quote }}
- name: REDIS_PORT
  value: {{ .Values.redis.port | quote }}
- name: REDIS_DB
  value: {{ .Values.redis.db | quote }}
- name: REDIS_KEY_PREFIX
  value: {{ .Values.redis.keyPrefix | quote }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret | quote }}
      key: {{ .Values.redis.passwordKey | quote }}
- name: LOG_LEVEL
  value: {{ .Values.logging.level | quote }}
- name: LOG_FORMAT
  value: {{ .Values.logging.format | quote }}
{{- end }}

{{/* The ledger stream, as berth_common.keys.RedisKeys names it. */}}
{{- define "berth.ledgerStream" -}}
{{- printf "%s:ledger" .Values.redis.keyPrefix }}
{{- end }}

{{- define "berth.modelsClaimName" -}}
{{- default (printf "%s-models" (include "berth.fullname" .)) .Values.models.existingClaim }}
{{- end }}

{{/* prometheus.io annotations for a pod whose metrics are on `port`; (dict "ctx" $ "port" 9100) */}}
{{- define "berth.metricsAnnotations" -}}
{{- if .ctx.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}
