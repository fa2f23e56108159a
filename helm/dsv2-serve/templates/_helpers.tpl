{{/* Names. */}}
{{- define "dsv2.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The name of a component's workload and Service: "dsv2.name" (list . "expert"). */}}
{{- define "dsv2.name" -}}
{{- printf "%s-%s" (include "dsv2.fullname" (index . 0)) (index . 1) -}}
{{- end -}}

{{- define "dsv2.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of a component: (list . "router"). */}}
{{- define "dsv2.selector" -}}
app.kubernetes.io/name: {{ (index . 0).Chart.Name }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "dsv2.image" -}}
{{- printf "%s:%s-%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) .Values.image.flavor -}}
{{- end -}}

{{/* The controller's gRPC address. */}}
{{- define "dsv2.controllerAddress" -}}
{{- printf "%s:%d" (include "dsv2.name" (list . "controller")) (int .Values.ports.grpc) -}}
{{- end -}}

{{/* The Secret holding the certificate of pod or workload NAME: (list . NAME). */}}
{{- define "dsv2.tlsSecret" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%s" (default (include "dsv2.fullname" $ctx) $ctx.Values.tls.secretPrefix) (index . 1) -}}
{{- end -}}

{{/* Flags that give a process its identity: (list . DIR) with the
     certificate files under DIR; --insecure without TLS. */}}
{{- define "dsv2.tlsArgs" -}}
{{- $ctx := index . 0 -}}
{{- if $ctx.Values.tls.enabled }}
- --tls_cert={{ index . 1 }}/tls.crt
- --tls_key={{ index . 1 }}/tls.key
- --tls_ca={{ index . 1 }}/ca.crt
{{- else }}
- --insecure
{{- end }}
{{- end -}}

{{/* Metrics flags. */}}
{{- define "dsv2.metricsArgs" -}}
{{- if .Values.metrics.enabled }}
- --metrics_listen=0.0.0.0:{{ .Values.ports.metrics }}
{{- end }}
{{- end -}}

{{/* The model volume. */}}
{{- define "dsv2.modelVolume" -}}
- name: model
{{- if eq .Values.model.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ .Values.model.pvc.claimName }}
    readOnly: true
{{- else }}
  hostPath:
    path: {{ .Values.model.hostPath.path }}
    type: Directory
{{- end }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "dsv2.modelMount" -}}
- name: model
  mountPath: /models/model
  readOnly: true
{{- if .Values.model.pvc.subPath }}
  subPath: {{ .Values.model.pvc.subPath }}
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Readiness on grpc.health.v1 (SERVING: the process can do its part):
     a native gRPC probe in plaintext; with TLS, which kubelet's gRPC probe
     cannot speak, the image's `dsv2 health` over TLS. Liveness is the gRPC
     port accepting connections: a worker that is NOT_SERVING because its
     cluster is incomplete must not be restarted for it. (list . CERT_DIR) */}}
{{- define "dsv2.probes" -}}
{{- $ctx := index . 0 -}}
{{- if $ctx.Values.tls.enabled }}
readinessProbe:
  exec:
    command: [dsv2, health, --addr, "localhost:{{ $ctx.Values.ports.grpc }}", --tls-ca, "{{ index . 1 }}/ca.crt"]
  periodSeconds: 5
  timeoutSeconds: 4
{{- else }}
readinessProbe:
  grpc:
    port: {{ $ctx.Values.ports.grpc }}
  periodSeconds: 5
{{- end }}
livenessProbe:
  tcpSocket:
    port: {{ $ctx.Values.ports.grpc }}
  periodSeconds: 10
  failureThreshold: 6
startupProbe:
  tcpSocket:
    port: {{ $ctx.Values.ports.grpc }}
  periodSeconds: 5
  failureThreshold: 120
{{- end -}}

{{/* Pod-level settings every workload shares. */}}
{{- define "dsv2.podSpec" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The pod's own name, IP and namespace, for $(VAR) in arguments. */}}
{{- define "dsv2.podEnv" -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_IP
  valueFrom: {fieldRef: {fieldPath: status.podIP}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
{{- end -}}

{{/* The number of pods a worker StatefulSet may have (certificates are made for each). */}}
{{- define "dsv2.maxPods" -}}
{{- $ctx := index . 0 -}}
{{- if and (eq (index . 1) "attention") $ctx.Values.attention.autoscaling.enabled -}}
{{- $ctx.Values.attention.autoscaling.maxReplicas -}}
{{- else -}}
{{- (index $ctx.Values (index . 1)).replicas -}}
{{- end -}}
{{- end -}}
