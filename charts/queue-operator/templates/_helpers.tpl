{{- define "queue-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "queue-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "queue-operator.labels" -}}
app.kubernetes.io/name: {{ include "queue-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: queue-operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "queue-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "queue-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The webhook's pods: another name, so the controller's (immutable) selector never matches them. */}}
{{- define "queue-operator.webhookSelectorLabels" -}}
app.kubernetes.io/name: {{ include "queue-operator.name" . }}-webhook
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The namespaces the operator watches, as its command line says them. */}}
{{- define "queue-operator.watchArgs" -}}
{{- if .Values.watch.allNamespaces }}
- --all-namespaces
{{- else }}
{{- range .Values.watch.namespaces }}
- --namespace={{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "queue-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "queue-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The rules the operator needs, shared by the ClusterRole and the per-namespace Roles. */}}
{{- define "queue-operator.namespacedRules" -}}
# Its own resources: watch them, add its finalizer, write status.
- apiGroups: [queue-operator.dev]
  resources: [delayqueues, kafkaqueues]
  verbs: [get, list, watch, patch]
- apiGroups: [queue-operator.dev]
  resources: [delayqueues/status, kafkaqueues/status]
  verbs: [get, patch]
- apiGroups: [queue-operator.dev]
  resources: [delayqueues/finalizers, kafkaqueues/finalizers]
  verbs: [update]
# A DelayQueue's children: the beanstalkd StatefulSet, its headless Service and PDB.
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
# A DelayQueue's node list (<name>-nodes) that its sidecars mount and watch.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# A DelayQueue's NetworkPolicy: only its client pods and the operator reach its nodes and Redis.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, patch, delete]
# A provisioned Redis's generated Secret (created once, never listed).
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
# spec.autoscaling: the queue's KEDA ScaledObject.
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, create, patch, delete]
# Read (never list) the Secrets a resource names: Redis URL, SASL credentials, CA.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# kopf posts events about what it did.
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end -}}

{{/* The operator image: repository@digest when a digest is given, else repository:tag (appVersion). */}}
{{- define "queue-operator.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The injected sidecar's image: its own values, else the operator image's. */}}
{{- define "queue-operator.sidecarImage" -}}
{{- $sidecar := .Values.webhook.sidecar.image -}}
{{- $repository := $sidecar.repository | default .Values.image.repository -}}
{{- if $sidecar.digest -}}
{{ $repository }}@{{ $sidecar.digest }}
{{- else if $sidecar.tag -}}
{{ $repository }}:{{ $sidecar.tag }}
{{- else if and (not $sidecar.repository) .Values.image.digest -}}
{{ $repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ $repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}
