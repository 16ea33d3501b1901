{{/* Names and labels. */}}
{{- define "meshlet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "meshlet.fullname" -}}
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

{{- define "meshlet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshlet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "meshlet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "meshlet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "meshlet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "meshlet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "meshlet.secretName" -}}
{{- default (printf "%s-secrets" (include "meshlet.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{- define "meshlet.image" -}}
{{- printf "%s:%s" .Values.meshlet.image.repository (default .Chart.AppVersion .Values.meshlet.image.tag) }}
{{- end }}

{{/* The outbound listener as the app reaches it. */}}
{{- define "meshlet.outboundUrl" -}}
{{- printf "http://127.0.0.1:%d" (int .Values.meshlet.ports.outbound) }}
{{- end }}

{{/*
Duration text of meshlet's config (20s, 1m30s, 500ms, 0) -> whole seconds, rounded up.
*/}}
{{- define "meshlet.durationSeconds" -}}
{{- $ms := 0 }}
{{- range regexFindAll "[0-9]+(ms|s|m|h)?" (toString .) -1 }}
{{- $n := int (regexFind "^[0-9]+" .) }}
{{- $unit := trimPrefix (regexFind "^[0-9]+" .) . }}
{{- if eq $unit "ms" }}{{ $ms = add $ms $n }}
{{- else if eq $unit "m" }}{{ $ms = add $ms (mul $n 60000) }}
{{- else if eq $unit "h" }}{{ $ms = add $ms (mul $n 3600000) }}
{{- else }}{{ $ms = add $ms (mul $n 1000) }}
{{- end }}
{{- end }}
{{- div (add $ms 999) 1000 }}
{{- end }}

{{/* meshlet's shutdown_grace in seconds (meshlet's default is 20s). */}}
{{- define "meshlet.graceSeconds" -}}
{{- include "meshlet.durationSeconds" (default "20s" (get (default dict .Values.meshlet.config) "shutdown_grace")) }}
{{- end }}

{{/* The pod's terminationGracePeriodSeconds: given (and checked) or computed. */}}
{{- define "meshlet.terminationGrace" -}}
{{- $grace := int (include "meshlet.graceSeconds" .) }}
{{- $preStop := int .Values.app.preStopSleepSeconds }}
{{- $floor := add $preStop $grace (int .Values.meshlet.preStopSleepSeconds) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $floor (int .Values.app.drainSeconds) 5 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) $floor }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above app.preStopSleepSeconds + meshlet.preStopSleepSeconds + meshlet.config.shutdown_grace (%d s), or meshlet is killed before it has drained" (int .Values.terminationGracePeriodSeconds) $floor) }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* A config string that must come from the environment, never be written in the ConfigMap. */}}
{{- define "meshlet.mustBeEnvRef" -}}
{{- $where := index . 0 }}
{{- $value := index . 1 }}
{{- if and $value (not (contains "${" (toString $value))) }}
{{- fail (printf "meshlet.config.%s holds a literal secret: put it in secrets.data or secrets.existingSecret, list it under secrets.env and write ${NAME} here (the ConfigMap is not secret)" $where) }}
{{- end }}
{{- end }}

{{/*
meshlet's config as the pod sees it: values.meshlet.config plus what the chart owns
(listen, service.name default, service.app from app.port, routes for app.baseUrls).
*/}}
{{- define "meshlet.config" -}}
{{- $cfg := deepCopy (default dict .Values.meshlet.config) }}
{{- $svc := deepCopy (default dict (get $cfg "service")) }}
{{- if not (get $svc "name") }}{{ $_ := set $svc "name" (include "meshlet.fullname" .) }}{{ end }}
{{- if and (not (hasKey $svc "app")) (not (kindIs "invalid" .Values.app.port)) }}
{{- $_ := set $svc "app" (printf "http://127.0.0.1:%d" (int .Values.app.port)) }}
{{- end }}
{{- $_ := set $cfg "service" $svc }}
{{- $p := .Values.meshlet.ports }}
{{- $_ := set $cfg "listen" (dict
      "outbound" (printf "127.0.0.1:%d" (int $p.outbound))
      "inbound" (printf "0.0.0.0:%d" (int $p.inbound))
      "api" (printf "127.0.0.1:%d" (int $p.api))
      "telemetry" (printf "0.0.0.0:%d" (int $p.telemetry))) }}
{{- $routes := default list (get $cfg "routes") }}
{{- range .Values.app.baseUrls }}
{{- $prefix := default (printf "/%s/" .service) .prefix }}
{{- $seen := false }}
{{- range $routes }}{{ if eq (toString .prefix) $prefix }}{{ $seen = true }}{{ end }}{{ end }}
{{- if not $seen }}
{{- $routes = append $routes (dict "prefix" $prefix "service" .service "strip_prefix" true) }}
{{- end }}
{{- end }}
{{- if $routes }}{{ $_ := set $cfg "routes" $routes }}{{ end }}
{{- /* Secrets belong in env vars, not in the ConfigMap. */}}
{{- $reg := default dict (get $cfg "registry") }}
{{- if regexMatch "^rediss?://[^/@]*:[^/@]+@" (toString (default "" (get $reg "redis"))) }}
{{- include "meshlet.mustBeEnvRef" (list "registry.redis (password)" (regexFind "//[^@]*@" (toString (get $reg "redis")))) }}
{{- end }}
{{- /* One Redis for registry, events and hub: a server, a Sentinel set or a Cluster (docs/scaling.md). */}}
{{- $stores := list }}
{{- range (list "redis" "sentinel" "cluster") }}{{ if get $reg . }}{{ $stores = append $stores (printf "registry.%s" .) }}{{ end }}{{ end }}
{{- if gt (len $stores) 1 }}
{{- fail (printf "meshlet.config sets %s: set exactly one of registry.redis, registry.sentinel and registry.cluster (docs/scaling.md)" (join " and " $stores)) }}
{{- end }}
{{- $sentinel := default dict (get $reg "sentinel") }}
{{- include "meshlet.mustBeEnvRef" (list "registry.sentinel.password" (get $sentinel "password")) }}
{{- include "meshlet.mustBeEnvRef" (list "registry.sentinel.sentinel_password" (get $sentinel "sentinel_password")) }}
{{- include "meshlet.mustBeEnvRef" (list "registry.cluster.password" (get (default dict (get $reg "cluster")) "password")) }}
{{- $amqp := default dict (get (default dict (get $cfg "events")) "amqp") }}
{{- if regexMatch "^amqps?://[^/@]*:[^/@]+@" (toString (default "" (get $amqp "url"))) }}
{{- include "meshlet.mustBeEnvRef" (list "events.amqp.url (password)" (regexFind "//[^@]*@" (toString (get $amqp "url")))) }}
{{- end }}
{{- $auth := default dict (get $cfg "auth") }}
{{- $token := default dict (get $auth "token") }}
{{- $secrets := get $token "secret" }}
{{- range (kindIs "slice" $secrets | ternary $secrets (list $secrets)) }}
{{- include "meshlet.mustBeEnvRef" (list "auth.token.secret" .) }}
{{- end }}
{{- $rt := default dict (get $cfg "realtime") }}
{{- include "meshlet.mustBeEnvRef" (list "realtime.auth.secret" (get (default dict (get $rt "auth")) "secret")) }}
{{- range $name, $s := (default dict (get $cfg "services")) }}
{{- include "meshlet.mustBeEnvRef" (list (printf "services.%s.auth.value" $name) (get (default dict (get (default dict $s) "auth")) "value")) }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}
