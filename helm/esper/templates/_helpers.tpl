{{/*
Names, labels, image references, addresses and generated secrets shared by the templates.
*/}}

{{- define "esper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object; "esper" for a release named esper. */}}
{{- define "esper.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "esper.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "esper.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "esper.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" -}}
{{- end -}}

{{/* Labels of every object; pass (dict "root" $ "component" "operator"). */}}
{{- define "esper.labels" -}}
helm.sh/chart: {{ include "esper.chart" .root }}
{{ include "esper.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: esper
{{- end -}}

{{- define "esper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "esper.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "esper.componentName" -}}
{{- printf "%s-%s" (include "esper.fullname" .root) .component -}}
{{- end -}}

{{- define "esper.controlImage" -}}
{{- printf "%s:%s" .Values.images.control.repository (.Values.images.control.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "esper.workerImage" -}}
{{- printf "%s:%s" .Values.images.worker.repository (.Values.images.worker.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "esper.imagePullSecrets" -}}
{{- with .Values.images.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A Service's in-cluster address: host.namespace.svc (reachable from every namespace). */}}
{{- define "esper.serviceHost" -}}
{{- printf "%s.%s.svc" (include "esper.componentName" .) .root.Release.Namespace -}}
{{- end -}}

{{- define "esper.urzaUrl" -}}
{{- if .Values.urza.url -}}
{{- .Values.urza.url -}}
{{- else if .Values.urza.enabled -}}
{{- printf "http://%s:%v" (include "esper.serviceHost" (dict "root" . "component" "urza")) .Values.urza.port -}}
{{- else -}}
{{- fail "urza.enabled=false needs urza.url (the address of the Urza to use)" -}}
{{- end -}}
{{- end -}}

{{/* Oona's redis:// URL, or nothing (runs then report only their phase). */}}
{{- define "esper.busUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s:6379/0" (include "esper.serviceHost" (dict "root" . "component" "redis")) -}}
{{- else if .Values.externalRedis.url -}}
{{- if not (regexMatch "^rediss?://" .Values.externalRedis.url) -}}
{{- fail (printf "externalRedis.url must be a redis:// or rediss:// URL, not %q" .Values.externalRedis.url) -}}
{{- end -}}
{{- .Values.externalRedis.url -}}
{{- end -}}
{{- end -}}

{{/*
A generated secret value: the value already stored in the release's Secret (so upgrades keep
it), else the value from values, else a new random one. Cached in .Values so every template of
one render sees the same value. Pass (dict "root" $ "secret" NAME "key" KEY "value" VALUE).
*/}}
{{- define "esper.secretValue" -}}
{{- $cache := .root.Values._generated | default dict -}}
{{- $id := printf "%s/%s" .secret .key -}}
{{- if not (hasKey $cache $id) -}}
{{- $value := .value -}}
{{- if not $value -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret -}}
{{- if and $existing (hasKey ($existing.data | default dict) .key) -}}
{{- $value = index $existing.data .key | b64dec -}}
{{- else -}}
{{- $value = randAlphaNum 40 -}}
{{- end -}}
{{- end -}}
{{- $_ := set $cache $id $value -}}
{{- $_ := set .root.Values "_generated" $cache -}}
{{- end -}}
{{- index $cache $id -}}
{{- end -}}

{{- define "esper.urzaTokenSecret" -}}
{{- .Values.auth.existingSecret | default (include "esper.componentName" (dict "root" . "component" "urza-token")) -}}
{{- end -}}

{{- define "esper.urzaToken" -}}
{{- include "esper.secretValue" (dict "root" . "secret" (include "esper.urzaTokenSecret" .) "key" "token" "value" .Values.auth.token) -}}
{{- end -}}

{{/* The Secret, in each worker namespace, that Job pods mount as their signing keys. */}}
{{- define "esper.signingSecret" -}}
{{- .Values.signing.existingSecret | default .Values.signing.secretName -}}
{{- end -}}

{{/* The generated (or given) signing key, kept in the release namespace across upgrades. */}}
{{- define "esper.signingKey" -}}
{{- include "esper.secretValue" (dict "root" . "secret" (include "esper.componentName" (dict "root" . "component" "signing")) "key" .Values.signing.keyId "value" .Values.signing.key) -}}
{{- end -}}

{{/* Namespaces where the operator's Jobs run (the workers' ServiceAccount and token). */}}
{{- define "esper.workerNamespaces" -}}
{{- $namespaces := .Values.workers.namespaces | default (list .Release.Namespace) -}}
{{- toJson (uniq $namespaces) -}}
{{- end -}}

{{/* The pod-level and container-level security contexts of the chart's own pods. */}}
{{- define "esper.podSecurityContext" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{- define "esper.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/* Scheduling of a component: pass its values (nodeSelector, tolerations, affinity). */}}
{{- define "esper.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Urza's environment (the server and its migration Job share the database settings). */}}
{{- define "esper.databaseSecret" -}}
{{- if .Values.postgresql.enabled -}}
{{- include "esper.componentName" (dict "root" . "component" "database") -}}
{{- else if .Values.externalDatabase.existingSecret -}}
{{- .Values.externalDatabase.existingSecret -}}
{{- else if .Values.externalDatabase.url -}}
{{- include "esper.componentName" (dict "root" . "component" "database") -}}
{{- else -}}
{{- fail "postgresql.enabled=false needs externalDatabase.url or externalDatabase.existingSecret" -}}
{{- end -}}
{{- end -}}

{{- define "esper.databaseSecretKey" -}}
{{- if and (not .Values.postgresql.enabled) .Values.externalDatabase.existingSecret -}}
{{- .Values.externalDatabase.existingSecretKey -}}
{{- else -}}
url
{{- end -}}
{{- end -}}

{{- define "esper.databaseEnv" -}}
- name: ESPER_URZA_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "esper.databaseSecret" . }}
      key: {{ include "esper.databaseSecretKey" . }}
{{- end -}}

{{- define "esper.s3Secret" -}}
{{- if and (not .Values.minio.enabled) .Values.externalS3.existingSecret -}}
{{- .Values.externalS3.existingSecret -}}
{{- else -}}
{{- include "esper.componentName" (dict "root" . "component" "s3") -}}
{{- end -}}
{{- end -}}

{{- define "esper.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "http://%s:9000" (include "esper.serviceHost" (dict "root" . "component" "minio")) -}}
{{- else -}}
{{- .Values.externalS3.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "esper.s3Bucket" -}}
{{- if .Values.minio.enabled -}}
{{- .Values.minio.bucket -}}
{{- else if .Values.externalS3.bucket -}}
{{- .Values.externalS3.bucket -}}
{{- else -}}
{{- fail "minio.enabled=false needs externalS3.bucket" -}}
{{- end -}}
{{- end -}}

{{/* Urza's storage settings: the database, and the S3 store of artifacts. */}}
{{- define "esper.urzaEnv" -}}
{{ include "esper.databaseEnv" . }}
- name: ESPER_URZA_BLOB_STORE
  value: s3
{{- with include "esper.s3Endpoint" . }}
- name: ESPER_URZA_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: ESPER_URZA_S3_BUCKET
  value: {{ include "esper.s3Bucket" . | quote }}
- name: ESPER_URZA_S3_REGION
  value: {{ .Values.externalS3.region | default "us-east-1" | quote }}
- name: ESPER_URZA_S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "esper.s3Secret" . }}
      key: accessKeyId
- name: ESPER_URZA_S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "esper.s3Secret" . }}
      key: secretAccessKey
{{- end -}}
