{{/*
Named templates. ecsmeta.initContainer, ecsmeta.credproxyContainer,
ecsmeta.proxyContainer and ecsmeta.appEnv are meant for reuse: a chart that
has ecsmeta as a dependency includes them with the subchart's context,
  initContainers:
    {{- include "ecsmeta.initContainers" .Subcharts.ecsmeta | nindent 4 }}
so that its own pods get ecsmeta configured by `ecsmeta:` values.
*/}}

{{- define "ecsmeta.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ecsmeta.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ecsmeta.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "ecsmeta.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ecsmeta.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ecsmeta.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ecsmeta.secretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-token" (include "ecsmeta.fullname" .)) -}}
{{- end -}}

{{- define "ecsmeta.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .appVersion) -}}
{{- end -}}

{{/* The upstream the init container DNATs to / the proxy forwards to. */}}
{{- define "ecsmeta.upstream" -}}
{{- if .Values.upstream.address -}}
{{- .Values.upstream.address -}}
{{- else if .Values.credproxy.enabled -}}
{{- printf "127.0.0.1:%v" .Values.credproxy.port -}}
{{- else -}}
{{- fail "upstream.address is required when credproxy.enabled is false: set it to your credential server's IP:port or host:port" -}}
{{- end -}}
{{- end -}}

{{- define "ecsmeta.proxyListen" -}}
{{- printf "127.0.0.1:%v" .Values.proxy.listenPort -}}
{{- end -}}

{{/* The endpoint URL apps use, first endpoint, port 80 omitted. */}}
{{- define "ecsmeta.endpointURL" -}}
{{- if eq .Values.mode "restricted" -}}
{{- printf "http://%s%s" (include "ecsmeta.proxyListen" .) .Values.credentialsPath -}}
{{- else -}}
{{- $ep := first .Values.endpoints | toString -}}
{{- printf "http://%s%s" (trimSuffix ":80" $ep) .Values.credentialsPath -}}
{{- end -}}
{{- end -}}

{{/* The init container; empty in restricted mode. */}}
{{- define "ecsmeta.initContainer" -}}
{{- $h := .Values.hardening -}}
{{- if and (eq .Values.mode "restricted") (or $h.allowUIDs $h.allowGIDs $h.guardCredproxyPort) -}}
{{- fail "hardening.* is done by ecsmeta-init, which restricted mode does not run: use mode dnat or userspace" -}}
{{- end -}}
{{- if ne .Values.mode "restricted" }}
- name: ecsmeta-init
  image: {{ include "ecsmeta.image" (dict "image" .Values.init.image "appVersion" .Chart.AppVersion) }}
  imagePullPolicy: {{ .Values.init.image.pullPolicy }}
  args:
    - --endpoint={{ join "," .Values.endpoints }}
    {{- if eq .Values.mode "userspace" }}
    - --upstream={{ include "ecsmeta.proxyListen" . }}
    {{- else }}
    - --upstream={{ include "ecsmeta.upstream" . }}
    {{- end }}
    - --iptables-backend={{ .Values.init.iptablesBackend }}
    {{- with .Values.hardening.allowUIDs }}
    - --allow-uids={{ join "," . }}
    {{- end }}
    {{- with .Values.hardening.allowGIDs }}
    - --allow-gids={{ join "," . }}
    {{- end }}
    {{- if and .Values.hardening.guardCredproxyPort .Values.credproxy.enabled }}
    - --guard-ports={{ .Values.credproxy.port }}
    {{- end }}
    {{- with .Values.init.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  securityContext:
    {{- toYaml .Values.init.securityContext | nindent 4 }}
  resources:
    {{- toYaml .Values.init.resources | nindent 4 }}
{{- end }}
{{- end -}}

{{/* CredProxy as a native sidecar (or regular container): the upstream. */}}
{{- define "ecsmeta.credproxyContainer" -}}
{{- if .Values.credproxy.enabled }}
- name: credproxy
  image: {{ printf "%s:%s" .Values.credproxy.image.repository .Values.credproxy.image.tag }}
  imagePullPolicy: {{ .Values.credproxy.image.pullPolicy }}
  {{- if .Values.proxy.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  {{- with .Values.credproxy.args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  env:
    - name: {{ .Values.credproxy.tokenEnv }}
      valueFrom:
        secretKeyRef:
          name: {{ include "ecsmeta.secretName" . }}
          key: {{ .Values.auth.secretKey }}
    {{- with .Values.credproxy.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if not (and .Values.hardening.guardCredproxyPort (ne .Values.mode "restricted")) }}
  startupProbe:
    httpGet: {path: {{ .Values.credproxy.healthPath }}, port: {{ .Values.credproxy.port }}}
    periodSeconds: 1
    failureThreshold: 60
  readinessProbe:
    httpGet: {path: {{ .Values.credproxy.healthPath }}, port: {{ .Values.credproxy.port }}}
    periodSeconds: 10
  {{- end }}
  securityContext:
    {{- toYaml .Values.credproxy.securityContext | nindent 4 }}
  resources:
    {{- toYaml .Values.credproxy.resources | nindent 4 }}
{{- end }}
{{- end -}}

{{/* ecsmeta-proxy: its startupProbe gates the app containers. */}}
{{- define "ecsmeta.proxyContainer" -}}
- name: ecsmeta-proxy
  image: {{ include "ecsmeta.image" (dict "image" .Values.proxy.image "appVersion" .Chart.AppVersion) }}
  imagePullPolicy: {{ .Values.proxy.image.pullPolicy }}
  {{- if .Values.proxy.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  args:
    {{- if eq .Values.mode "restricted" }}
    - --endpoint={{ include "ecsmeta.proxyListen" . }}
    {{- else }}
    - --endpoint={{ join "," .Values.endpoints }}
    {{- end }}
    - --upstream={{ include "ecsmeta.upstream" . }}
    {{- if ne .Values.mode "dnat" }}
    - --listen={{ include "ecsmeta.proxyListen" . }}
    {{- end }}
    - --health-addr=:{{ .Values.proxy.healthPort }}
    {{- if .Values.credproxy.enabled }}
    - --probe-path={{ .Values.credproxy.healthPath }}
    {{- end }}
    - --probe-interval={{ .Values.proxy.probeInterval }}
    - --probe-timeout={{ .Values.proxy.probeTimeout }}
    {{- if not .Values.proxy.nativeSidecar }}
    - --shutdown-delay={{ .Values.proxy.shutdownDelay }}
    {{- end }}
    {{- with .Values.proxy.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - {name: ecsmeta-health, containerPort: {{ .Values.proxy.healthPort }}, protocol: TCP}
  startupProbe:
    httpGet: {path: /readyz, port: ecsmeta-health}
    periodSeconds: 1
    failureThreshold: 120
  readinessProbe:
    httpGet: {path: /readyz, port: ecsmeta-health}
    periodSeconds: 5
  livenessProbe:
    httpGet: {path: /healthz, port: ecsmeta-health}
    periodSeconds: 10
  securityContext:
    {{- toYaml .Values.proxy.securityContext | nindent 4 }}
  resources:
    {{- toYaml .Values.proxy.resources | nindent 4 }}
{{- end -}}

{{/* Every init container ecsmeta needs, in order: init, CredProxy, proxy. */}}
{{- define "ecsmeta.initContainers" -}}
{{- include "ecsmeta.initContainer" . }}
{{- if .Values.proxy.nativeSidecar }}
{{- include "ecsmeta.credproxyContainer" . }}
{{ include "ecsmeta.proxyContainer" . }}
{{- end }}
{{- end -}}

{{/* Regular containers ecsmeta needs when native sidecars are off. */}}
{{- define "ecsmeta.sidecarContainers" -}}
{{- if not .Values.proxy.nativeSidecar }}
{{- include "ecsmeta.credproxyContainer" . }}
{{ include "ecsmeta.proxyContainer" . }}
{{- end }}
{{- end -}}

{{/* The SDK variables for an app container. */}}
{{- define "ecsmeta.appEnv" -}}
{{- if eq .Values.mode "restricted" }}
- name: AWS_CONTAINER_CREDENTIALS_FULL_URI
  value: {{ include "ecsmeta.endpointURL" . | quote }}
{{- else if eq (toString (first .Values.endpoints)) "169.254.170.2:80" }}
- name: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI
  value: {{ .Values.credentialsPath | quote }}
{{- else }}
- name: AWS_CONTAINER_CREDENTIALS_FULL_URI
  value: {{ include "ecsmeta.endpointURL" . | quote }}
{{- end }}
{{- if .Values.auth.tokenFile }}
- name: AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE
  value: /var/run/secrets/ecsmeta/{{ .Values.auth.secretKey }}
{{- else }}
- name: AWS_CONTAINER_AUTHORIZATION_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "ecsmeta.secretName" . }}
      key: {{ .Values.auth.secretKey }}
{{- end }}
- name: AWS_EC2_METADATA_DISABLED
  value: "true"
{{- end -}}

{{/* The token volume mount and volume, when auth.tokenFile. */}}
{{- define "ecsmeta.appVolumeMounts" -}}
{{- if .Values.auth.tokenFile }}
- name: ecsmeta-token
  mountPath: /var/run/secrets/ecsmeta
  readOnly: true
{{- end }}
{{- end -}}

{{- define "ecsmeta.volumes" -}}
{{- if .Values.auth.tokenFile }}
- name: ecsmeta-token
  secret:
    secretName: {{ include "ecsmeta.secretName" . }}
{{- end }}
{{- end -}}

{{/* One app container with ecsmeta's env and defaults merged in. */}}
{{- define "ecsmeta.appContainer" -}}
{{- $c := deepCopy .container -}}
{{- $env := concat ($c.env | default list) (include "ecsmeta.appEnv" .root | fromYamlArray) -}}
{{- $_ := set $c "env" $env -}}
{{- $mounts := include "ecsmeta.appVolumeMounts" .root | fromYamlArray -}}
{{- if $mounts }}{{ $_ := set $c "volumeMounts" (concat ($c.volumeMounts | default list) $mounts) }}{{ end -}}
{{- if not $c.securityContext }}{{ $_ := set $c "securityContext" .root.Values.app.securityContext }}{{ end -}}
{{- list $c | toYaml -}}
{{- end -}}
