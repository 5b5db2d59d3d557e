{{/*
Names. The release name alone when it already contains the chart name (helm install
tenantgate-gateway ... gives the names of the kustomization), else RELEASE-tenantgate.
*/}}
{{- define "tenantgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tenantgate.fullname" -}}
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

{{- define "tenantgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The app.kubernetes.io/component of everything: what the kustomizations call it. */}}
{{- define "tenantgate.component" -}}
{{- if eq .Values.mode "gateway" }}gateway{{ else }}thanos-sidecar{{ end }}
{{- end }}

{{- define "tenantgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tenantgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tenantgate.labels" -}}
helm.sh/chart: {{ include "tenantgate.chart" . }}
{{ include "tenantgate.selectorLabels" . }}
app.kubernetes.io/component: {{ include "tenantgate.component" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The values of the mode: .Values.sidecar or .Values.gateway. */}}
{{- define "tenantgate.modeValues" -}}
{{- toYaml (index .Values .Values.mode) }}
{{- end }}

{{/* image: REPOSITORY:TAG, or REPOSITORY@DIGEST. Argument: the image values and a default tag. */}}
{{- define "tenantgate.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else if not (.image.tag | default .defaultTag) }}
{{- fail (printf "image %s: set a tag or a digest" .image.repository) }}
{{- else }}
{{- printf "%s:%s" .image.repository (.image.tag | default .defaultTag | toString) }}
{{- end }}
{{- end }}

{{/*
tenantgate's config file, exactly as the ConfigMap holds it: the mode's `config`, with trailing
blank space cut to one newline (the checksum annotation is the sha256 of this text).
*/}}
{{- define "tenantgate.configText" -}}
{{- $text := index .Values .Values.mode "config" | default "" | toString }}
{{- if not (trim $text) }}
{{- fail (printf "%s.config is empty: tenantgate needs a config file" .Values.mode) }}
{{- end }}
{{- printf "%s\n" (regexReplaceAll "\\s+$" $text "") }}
{{- end }}

{{/*
What the templates need to know of the config, as YAML: the data port and host (server.listen,
its first address; tenantgate's default is 127.0.0.1:9090), the admin port (admin.listen, which
the probes need), whether server.tls is set, and the path prefix of the first route with a
`prometheus:` block. Fails on a config that is not a YAML mapping or lacks admin.listen.
*/}}
{{- define "tenantgate.configFacts" -}}
{{- $text := include "tenantgate.configText" . }}
{{- $cfg := fromYaml $text }}
{{- if hasKey $cfg "Error" }}
{{- fail (printf "%s.config is not a YAML mapping: %s" .Values.mode (index $cfg "Error")) }}
{{- end }}
{{- $server := index $cfg "server" | default dict }}
{{- $listen := index $server "listen" | default "127.0.0.1:9090" }}
{{- if kindIs "slice" $listen }}{{ $listen = first $listen }}{{ end }}
{{- $listen = toString $listen }}
{{- $port := regexFind "[0-9]+$" $listen }}
{{- if not (regexMatch ":[0-9]+$" $listen) }}
{{- fail (printf "%s.config: server.listen %q has no :PORT" .Values.mode $listen) }}
{{- end }}
{{- $host := regexReplaceAll ":[0-9]+$" $listen "" | trimPrefix "[" | trimSuffix "]" }}
{{- $admin := index (index $cfg "admin" | default dict) "listen" | default "" }}
{{- if kindIs "slice" $admin }}{{ $admin = first $admin }}{{ end }}
{{- $admin = toString $admin }}
{{- if not (regexMatch ":[0-9]+$" $admin) }}
{{- fail (printf "%s.config: admin.listen must be set (ADDR:PORT): the probes and scrapes use that port" .Values.mode) }}
{{- end }}
{{- $prefix := "" }}
{{- range (index $cfg "routes" | default list) }}
{{- if and (not $prefix) (kindIs "map" .) (hasKey . "prometheus") (not (kindIs "invalid" (index . "prometheus"))) }}
{{- $match := index . "match" | default dict }}
{{- $prefix = index $match "path_prefix" | default (index $match "path") | default "" | toString }}
{{- end }}
{{- end }}
dataPort: {{ $port }}
dataHost: {{ $host | quote }}
adminPort: {{ regexFind "[0-9]+$" $admin }}
adminHost: {{ regexReplaceAll ":[0-9]+$" $admin "" | trimPrefix "[" | trimSuffix "]" | quote }}
tls: {{ not (kindIs "invalid" (index $server "tls")) }}
prometheusPrefix: {{ $prefix | quote }}
{{- end }}

{{/* The Thanos sidecar's --prometheus.url: given, or tenantgate's data port and emulated prefix. */}}
{{- define "tenantgate.prometheusURL" -}}
{{- if .Values.sidecar.thanos.prometheusURL }}
{{- .Values.sidecar.thanos.prometheusURL }}
{{- else }}
{{- $facts := include "tenantgate.configFacts" . | fromYaml }}
{{- if not $facts.prometheusPrefix }}
{{- fail "sidecar.config: no route has a `prometheus:` block with match.path_prefix: the Thanos sidecar needs one (or set sidecar.thanos.prometheusURL)" }}
{{- end }}
{{- $host := "127.0.0.1" }}
{{- if contains ":" $facts.dataHost }}{{ $host = "[::1]" }}{{ end }}
{{- printf "%s://%s:%v%s" (ternary "https" "http" $facts.tls) $host $facts.dataPort (trimSuffix "/" $facts.prometheusPrefix) }}
{{- end }}
{{- end }}
