{{/*
Names, labels and shared snippets of the nearline chart.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "nearline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified name. Truncated to 52 characters: StatefulSet pods add "-<ordinal>" and
the controller-revision-hash label adds a hash, both must stay within 63.
*/}}
{{- define "nearline.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Namespace of every namespaced object. */}}
{{- define "nearline.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of the headless Service that gives each worker a stable DNS name. */}}
{{- define "nearline.headlessServiceName" -}}
{{- printf "%s-headless" (include "nearline.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Chart label value. */}}
{{- define "nearline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the worker pods; never change them (selectors are immutable). */}}
{{- define "nearline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nearline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end -}}

{{/* Labels of every object, without the component. */}}
{{- define "nearline.baseLabels" -}}
app.kubernetes.io/name: {{ include "nearline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ include "nearline.chart" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nearline
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of the workers and the objects around them. */}}
{{- define "nearline.labels" -}}
{{ include "nearline.baseLabels" . }}
app.kubernetes.io/component: worker
{{- end -}}

{{/* Common annotations block (empty when there are none). */}}
{{- define "nearline.annotations" -}}
{{- with .Values.commonAnnotations }}
{{- toYaml . }}
{{- end }}
{{- end -}}

{{/* The worker image reference. */}}
{{- define "nearline.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString -}}
{{- $repo := .Values.image.repository -}}
{{- if .Values.image.registry -}}
{{- $repo = printf "%s/%s" .Values.image.registry .Values.image.repository -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* ServiceAccount name. */}}
{{- define "nearline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "nearline.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* True ("true") when the Kafka protocol uses SASL. */}}
{{- define "nearline.kafka.sasl" -}}
{{- if hasPrefix "SASL" (upper .Values.kafka.securityProtocol) -}}true{{- end -}}
{{- end -}}

{{/* True ("true") when the Kafka protocol uses TLS. */}}
{{- define "nearline.kafka.tls" -}}
{{- if has (upper .Values.kafka.securityProtocol) (list "SSL" "SASL_SSL") -}}true{{- end -}}
{{- end -}}

{{/* True ("true") when Kafka TLS files are mounted. */}}
{{- define "nearline.kafka.tlsFiles" -}}
{{- if and (include "nearline.kafka.tls" .) (or .Values.kafka.tls.ca.existingSecret .Values.kafka.tls.client.existingSecret) -}}true{{- end -}}
{{- end -}}

{{/* True ("true") when the Aerospike CA file is mounted. */}}
{{- define "nearline.aerospike.tlsFiles" -}}
{{- if and (eq .Values.nearline.attributeStore "aerospike") .Values.aerospike.tls.ca.existingSecret -}}true{{- end -}}
{{- end -}}

{{/*
Checks on values that the schema cannot express. Rendering fails with a clear message.
*/}}
{{- define "nearline.validateValues" -}}
{{- $partitions := int .Values.kafka.topics.partitions -}}
{{- if gt (int .Values.replicaCount) $partitions -}}
{{- fail (printf "replicaCount (%d) must not exceed kafka.topics.partitions (%d): a worker without a partition owns no state and serves nothing; add partitions (with a new nearline.appId) or run fewer workers" (int .Values.replicaCount) $partitions) -}}
{{- end -}}
{{- if .Values.autoscaling.hpa.enabled -}}
{{- if gt (int .Values.autoscaling.hpa.maxReplicas) $partitions -}}
{{- fail (printf "autoscaling.hpa.maxReplicas (%d) must not exceed kafka.topics.partitions (%d): a worker without a partition owns no state and serves nothing" (int .Values.autoscaling.hpa.maxReplicas) $partitions) -}}
{{- end -}}
{{- if gt (int .Values.autoscaling.hpa.minReplicas) (int .Values.autoscaling.hpa.maxReplicas) -}}
{{- fail (printf "autoscaling.hpa.minReplicas (%d) must not exceed autoscaling.hpa.maxReplicas (%d)" (int .Values.autoscaling.hpa.minReplicas) (int .Values.autoscaling.hpa.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- if and (include "nearline.kafka.sasl" .) (not .Values.kafka.sasl.username) -}}
{{- fail (printf "kafka.sasl.username is required when kafka.securityProtocol is %s" .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- if and (include "nearline.kafka.sasl" .) (not .Values.kafka.sasl.existingSecret) -}}
{{- fail (printf "kafka.sasl.existingSecret (an existing Secret holding the SASL password) is required when kafka.securityProtocol is %s; the chart never takes the password itself" .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- if and (eq .Values.nearline.attributeStore "aerospike") (empty .Values.aerospike.hosts) -}}
{{- fail "aerospike.hosts (host:port list) is required when nearline.attributeStore is aerospike" -}}
{{- end -}}
{{- if and .Values.aerospike.tls.ca.existingSecret (not .Values.aerospike.tls.tlsName) -}}
{{- fail "aerospike.tls.tlsName is required when aerospike.tls.ca.existingSecret is set" -}}
{{- end -}}
{{- end -}}

{{/*
Environment shared by the workers and the topic Job: Kafka connection and topic layout.
Secrets only by secretKeyRef.
*/}}
{{- define "nearline.env.kafka" -}}
- name: NEARLINE_PROFILE
  value: production
- name: NEARLINE_APP_ID
  value: {{ .Values.nearline.appId | quote }}
- name: NEARLINE_BROKER_URL
  value: {{ join "," .Values.kafka.brokers | quote }}
- name: NEARLINE_KAFKA_SECURITY_PROTOCOL
  value: {{ upper .Values.kafka.securityProtocol | quote }}
{{- if include "nearline.kafka.sasl" . }}
- name: NEARLINE_KAFKA_SASL_MECHANISM
  value: {{ upper .Values.kafka.sasl.mechanism | quote }}
- name: NEARLINE_KAFKA_SASL_USERNAME
  value: {{ .Values.kafka.sasl.username | quote }}
- name: NEARLINE_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret | quote }}
      key: {{ .Values.kafka.sasl.existingSecretPasswordKey | quote }}
{{- end }}
{{- if include "nearline.kafka.tls" . }}
{{- if .Values.kafka.tls.ca.existingSecret }}
- name: NEARLINE_KAFKA_SSL_CAFILE
  value: {{ printf "%s/ca.crt" .Values.kafka.tls.mountPath | quote }}
{{- end }}
{{- if .Values.kafka.tls.client.existingSecret }}
- name: NEARLINE_KAFKA_SSL_CERTFILE
  value: {{ printf "%s/client.crt" .Values.kafka.tls.mountPath | quote }}
- name: NEARLINE_KAFKA_SSL_KEYFILE
  value: {{ printf "%s/client.key" .Values.kafka.tls.mountPath | quote }}
{{- end }}
{{- end }}
- name: NEARLINE_TOPIC_ACTIONS
  value: {{ .Values.kafka.topics.actions.name | quote }}
- name: NEARLINE_TOPIC_DLQ
  value: {{ .Values.kafka.topics.dlq.name | quote }}
- name: NEARLINE_TOPIC_ITEM_ATTRIBUTES
  value: {{ .Values.kafka.topics.itemAttributes.name | quote }}
- name: NEARLINE_TOPIC_RECOMMENDATIONS_LOG
  value: {{ .Values.kafka.topics.recommendationsLog.name | quote }}
- name: NEARLINE_TOPIC_TRAINING_EXAMPLES
  value: {{ .Values.kafka.topics.trainingExamples.name | quote }}
- name: NEARLINE_TOPIC_PARTITIONS
  value: {{ .Values.kafka.topics.partitions | quote }}
- name: NEARLINE_TOPIC_REPLICATION
  value: {{ .Values.kafka.topics.replicationFactor | quote }}
- name: NEARLINE_LOG_LEVEL
  value: {{ upper .Values.nearline.logLevel | quote }}
{{- end -}}

{{/* Kafka TLS volume: CA and client certificate projected from existing Secrets. */}}
{{- define "nearline.volume.kafkaTls" -}}
- name: kafka-tls
  projected:
    defaultMode: 0440
    sources:
      {{- if .Values.kafka.tls.ca.existingSecret }}
      - secret:
          name: {{ .Values.kafka.tls.ca.existingSecret | quote }}
          items:
            - key: {{ .Values.kafka.tls.ca.key | quote }}
              path: ca.crt
      {{- end }}
      {{- if .Values.kafka.tls.client.existingSecret }}
      - secret:
          name: {{ .Values.kafka.tls.client.existingSecret | quote }}
          items:
            - key: {{ .Values.kafka.tls.client.certKey | quote }}
              path: client.crt
            - key: {{ .Values.kafka.tls.client.keyKey | quote }}
              path: client.key
      {{- end }}
{{- end -}}

{{/* Pod anti-affinity preset spreading workers over nodes. */}}
{{- define "nearline.affinity" -}}
{{- if .Values.affinity -}}
{{- toYaml .Values.affinity -}}
{{- else if eq .Values.podAntiAffinityPreset "soft" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "nearline.selectorLabels" . | nindent 12 }}
{{- else if eq .Values.podAntiAffinityPreset "hard" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "nearline.selectorLabels" . | nindent 10 }}
{{- end -}}
{{- end -}}

{{/* The container security context without the chart's "enabled" switch. */}}
{{- define "nearline.containerSecurityContext" -}}
{{- omit .Values.containerSecurityContext "enabled" | toYaml -}}
{{- end -}}

{{/* The pod security context without the chart's "enabled" switch. */}}
{{- define "nearline.podSecurityContext" -}}
{{- omit .Values.podSecurityContext "enabled" | toYaml -}}
{{- end -}}
