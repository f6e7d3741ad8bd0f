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
{{- if gt (int .Values.serving.processes) 0 -}}
{{- if eq (int .Values.containerPorts.worker) (int .Values.containerPorts.http) -}}
{{- fail (printf "containerPorts.worker (%d) must differ from containerPorts.http when serving.processes is above 0: the worker and the serving processes share the pod's network, and the serving processes take the http port (NEARLINE_WORKER_PORT, NEARLINE_WEB_PORT)" (int .Values.containerPorts.worker)) -}}
{{- end -}}
{{- if .Values.autoscaling.hpa.enabled -}}
{{- range $resource, $target := dict "cpu" .Values.autoscaling.hpa.targetCPU "memory" .Values.autoscaling.hpa.targetMemory -}}
{{- if and $target (not (dig "requests" $resource "" ($.Values.serving.resources | default dict))) -}}
{{- fail (printf "serving.resources.requests.%s is required when the HPA targets %s utilization: it divides the pod's use by the sum of its containers' requests and cannot compute it when one is missing" $resource $resource) -}}
{{- end -}}
{{- end -}}
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
{{- if and .Values.models.existingClaim (not .Values.nearline.modelDir) -}}
{{- fail "nearline.modelDir is required when models.existingClaim is set: the claim is mounted there" -}}
{{- end -}}
{{- if and .Values.trainer.enabled (not .Values.models.existingClaim) -}}
{{- fail "models.existingClaim (a ReadWriteMany claim) is required when trainer.enabled is true: the trainer writes the model versions the workers serve, so they must share the directory" -}}
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
- name: NEARLINE_TOPIC_ERASURES
  value: {{ .Values.kafka.topics.erasures.name | quote }}
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

{{/*
Environment of both containers of a pod, the worker and `nearline serve`: they must agree on
every NEARLINE_* setting, above all NEARLINE_DATA_DIR (where the worker publishes its state
for the serving processes) and the topic layout. Secrets only by secretKeyRef.
*/}}
{{- define "nearline.env.app" -}}
# POD_NAME must come before NEARLINE_ADVERTISED_URL, which expands it.
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: NEARLINE_ADVERTISED_URL
  value: {{ printf "http://$(POD_NAME).%s.%s.svc.%s:%d" (include "nearline.headlessServiceName" .) (include "nearline.namespace" .) .Values.clusterDomain (int .Values.containerPorts.http) | quote }}
- name: NEARLINE_WEB_HOST
  value: "0.0.0.0"
- name: NEARLINE_WEB_PORT
  value: {{ .Values.containerPorts.http | quote }}
{{- if gt (int .Values.serving.processes) 0 }}
- name: NEARLINE_SERVE_PROCESSES
  value: {{ .Values.serving.processes | quote }}
- name: NEARLINE_WORKER_PORT
  value: {{ .Values.containerPorts.worker | quote }}
{{- end }}
- name: NEARLINE_DATA_DIR
  value: {{ .Values.nearline.dataDir | quote }}
{{- include "nearline.env.kafka" . | nindent 0 }}
- name: NEARLINE_STANDBY_REPLICAS
  value: {{ .Values.nearline.standbyReplicas | quote }}
- name: NEARLINE_ACTIONS_OF_INTEREST
  value: {{ join "," .Values.nearline.actionsOfInterest | quote }}
- name: NEARLINE_WINDOWS
  value: {{ join "," .Values.nearline.windows | quote }}
- name: NEARLINE_RETENTION
  value: {{ .Values.nearline.retention | quote }}
- name: NEARLINE_MAX_RECENT_ACTIONS
  value: {{ .Values.nearline.maxRecentActions | quote }}
- name: NEARLINE_STALL_TIMEOUT
  value: {{ .Values.nearline.stallTimeout | quote }}
- name: NEARLINE_TORCH_THREADS
  value: {{ .Values.nearline.torchThreads | quote }}
{{- with .Values.nearline.modelDir }}
- name: NEARLINE_MODEL_DIR
  value: {{ . | quote }}
{{- end }}
- name: NEARLINE_ATTRIBUTE_STORE
  value: {{ .Values.nearline.attributeStore | quote }}
{{- if eq .Values.nearline.attributeStore "aerospike" }}
- name: NEARLINE_AEROSPIKE_HOSTS
  value: {{ join "," .Values.aerospike.hosts | quote }}
- name: NEARLINE_AEROSPIKE_NAMESPACE
  value: {{ .Values.aerospike.namespace | quote }}
{{- if .Values.aerospike.auth.existingSecret }}
- name: NEARLINE_AEROSPIKE_USER
  valueFrom:
    secretKeyRef:
      name: {{ .Values.aerospike.auth.existingSecret | quote }}
      key: {{ .Values.aerospike.auth.existingSecretUserKey | quote }}
- name: NEARLINE_AEROSPIKE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.aerospike.auth.existingSecret | quote }}
      key: {{ .Values.aerospike.auth.existingSecretPasswordKey | quote }}
{{- end }}
{{- if .Values.aerospike.tls.tlsName }}
- name: NEARLINE_AEROSPIKE_TLS_NAME
  value: {{ .Values.aerospike.tls.tlsName | quote }}
{{- end }}
{{- if include "nearline.aerospike.tlsFiles" . }}
- name: NEARLINE_AEROSPIKE_TLS_CAFILE
  value: {{ printf "%s/ca.crt" .Values.aerospike.tls.mountPath | quote }}
{{- end }}
{{- end }}
{{- if .Values.nearline.apiToken.existingSecret }}
- name: NEARLINE_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.nearline.apiToken.existingSecret | quote }}
      key: {{ .Values.nearline.apiToken.existingSecretKey | quote }}
{{- end }}
{{- with .Values.nearline.extraEnvVars }}
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end -}}

{{/* envFrom of both containers (empty when neither a ConfigMap nor a Secret is given). */}}
{{- define "nearline.envFrom.app" -}}
{{- if or .Values.nearline.extraEnvVarsCM .Values.nearline.extraEnvVarsSecret }}
envFrom:
  {{- with .Values.nearline.extraEnvVarsCM }}
  - configMapRef:
      name: {{ . | quote }}
  {{- end }}
  {{- with .Values.nearline.extraEnvVarsSecret }}
  - secretRef:
      name: {{ . | quote }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Volume mounts of both containers: the serving processes read the worker's RocksDB on the data volume. */}}
{{- define "nearline.volumeMounts.app" -}}
- name: data
  mountPath: {{ .Values.nearline.dataDir | quote }}
- name: tmp
  mountPath: /tmp
{{- if .Values.models.existingClaim }}
- name: models
  mountPath: {{ .Values.nearline.modelDir | quote }}
{{- end }}
{{- if include "nearline.kafka.tlsFiles" . }}
- name: kafka-tls
  mountPath: {{ .Values.kafka.tls.mountPath | quote }}
  readOnly: true
{{- end }}
{{- if include "nearline.aerospike.tlsFiles" . }}
- name: aerospike-tls
  mountPath: {{ .Values.aerospike.tls.mountPath | quote }}
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{- toYaml . | nindent 0 }}
{{- end }}
{{- end -}}
