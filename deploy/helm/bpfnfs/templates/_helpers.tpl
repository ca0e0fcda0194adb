{{/*
The chart's name, or nameOverride.
*/}}
{{- define "bpfnfs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of every object: fullnameOverride, else the release name when it already holds the chart's
name (release "bpfnfs" -> "bpfnfs"), else "<release>-<chart>". 63 characters at most (a DNS label).
*/}}
{{- define "bpfnfs.fullname" -}}
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

{{/*
"bpfnfs-0.1.0", for the helm.sh/chart label.
*/}}
{{- define "bpfnfs.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The labels every object carries.
*/}}
{{- define "bpfnfs.labels" -}}
helm.sh/chart: {{ include "bpfnfs.chart" . }}
{{ include "bpfnfs.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: agent
app.kubernetes.io/part-of: bpfnfs
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The labels that select the agent's pods (DaemonSet, Service, PodMonitor). Never change them in an
upgrade: a DaemonSet's selector is immutable.
*/}}
{{- define "bpfnfs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bpfnfs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount the agent runs as.
*/}}
{{- define "bpfnfs.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bpfnfs.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
repository:tag, the tag defaulting to the chart's appVersion; a digest (sha256:...) pins it.
*/}}
{{- define "bpfnfs.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The port /metrics, /healthz and /readyz are served on (metrics.listen is given as a flag: ":<port>").
*/}}
{{- define "bpfnfs.port" -}}
{{- .Values.port | int }}
{{- end }}

{{/*
The relabelings both monitors start with. Prometheus gives every target the labels namespace, pod and
container of the agent's own pod; bpfnfs's per-process series carry those same names for the pod that
did the I/O, and Prometheus would rename bpfnfs's to exported_namespace, exported_pod and
exported_container (or, with honorLabels, pin the agent's pod onto every series outside a pod, whose
pod label is empty). So the agent's own are dropped here, and the node it runs on is kept as "node".
*/}}
{{- define "bpfnfs.monitorRelabelings" -}}
- action: replace
  sourceLabels: [__meta_kubernetes_pod_node_name]
  targetLabel: node
- action: labeldrop
  regex: (namespace|pod|container)
{{- end }}
