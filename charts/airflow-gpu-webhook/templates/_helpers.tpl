{{/* The name of every object; the manifests use gpu-webhook. */}}
{{- define "gpu-webhook.fullname" -}}
{{- .Values.fullnameOverride | default "gpu-webhook" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object: the manifests' two, plus Helm's. */}}
{{- define "gpu-webhook.labels" -}}
app.kubernetes.io/name: {{ include "gpu-webhook.fullname" . }}
{{ include "gpu-webhook.commonLabels" . }}
{{- end -}}

{{/* Labels of the monitoring objects (as manifests/monitoring/: no name, component monitoring). */}}
{{- define "gpu-webhook.commonLabels" -}}
app.kubernetes.io/part-of: airflow-gpu-webhook
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "gpu-webhook.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpu-webhook.fullname" . }}
{{- end -}}

{{- define "gpu-webhook.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The policy as a map: inline, else the reference policy shipped in files/policy.yaml. */}}
{{- define "gpu-webhook.policy" -}}
{{- if .Values.policy.inline -}}
{{- toYaml .Values.policy.inline -}}
{{- else -}}
{{- .Files.Get "files/policy.yaml" -}}
{{- end -}}
{{- end -}}

{{/*
What the generated CEL matchConditions depend on, read from the policy as
webhook/cli/conditions.py's condition_inputs does (its defaults are the policy model's).
A policy whose inputs differ from those the conditions were generated for would leave rules
that never run, so the webhook configurations refuse to render then.
*/}}
{{- define "gpu-webhook.conditionInputs" -}}
{{- $spec := (include "gpu-webhook.policy" . | fromYaml).spec | default dict -}}
{{- $keys := list -}}
{{- range $name, $profile := ($spec.profiles | default dict) -}}
{{- range $t := ($profile.tolerations | default list) -}}
{{- $keys = append $keys ($t.key | default "") -}}
{{- end -}}
{{- end -}}
{{- $labels := $spec.labels | default dict -}}
{{- $runtime := list "nvidia" -}}
{{- if hasKey $spec "gpuRuntimeClasses" }}{{ $runtime = $spec.gpuRuntimeClasses | default list }}{{ end -}}
{{- $inputs := dict "profileLabel" ($labels.profile | default "gpu.platform/profile")
         "tolerationKeys" ($keys | uniq | sortAlpha)
         "gpuRuntimeClasses" $runtime
         "resourceClaims" ($spec.resourceClaims | default "deny")
         "gpuReachingPods" ($spec.gpuReachingPods | default "deny") -}}
{{- $claims := include "gpu-webhook.claimProfiles" . | fromJson -}}
{{- if $claims }}{{ $_ := set $inputs "claimTemplates" $claims }}{{ end -}}
{{- toJson $inputs -}}
{{- end -}}

{{/*
The policy's DRA `claim` profiles (dra.form absent or "claim"), as webhook/cli/conditions.py's
_claim_profiles reads them: profile name -> {deviceClassName, selector (when set)}. Each gets a
ResourceClaimTemplate gpu-platform-<profile> per tenant namespace (templates/claim-templates.yaml).
*/}}
{{- define "gpu-webhook.claimProfiles" -}}
{{- $claims := dict -}}
{{- if not .Values.policy.existingConfigMap -}}
{{- $spec := (include "gpu-webhook.policy" . | fromYaml).spec | default dict -}}
{{- range $name, $profile := ($spec.profiles | default dict) -}}
{{- with $profile.dra -}}
{{- if eq (.form | default "claim") "claim" -}}
{{- $template := dict "deviceClassName" .deviceClassName -}}
{{- if .selector }}{{ $_ := set $template "selector" .selector }}{{ end -}}
{{- $_ := set $claims $name $template -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $claims -}}
{{- end -}}

{{/* The matchConditions to use (values, else files/match-conditions.yaml), checked against the policy. */}}
{{- define "gpu-webhook.matchConditions" -}}
{{- $mc := .Values.webhooks.matchConditions -}}
{{- if not $mc -}}
{{- $mc = .Files.Get "files/match-conditions.yaml" | fromYaml -}}
{{- end -}}
{{- if .Values.policy.existingConfigMap -}}
{{- if not .Values.webhooks.matchConditions -}}
{{- fail "policy.existingConfigMap: the chart cannot read that policy, so give the CEL generated for it: gpu-webhook policy conditions --helm-values YOUR_POLICY > conditions.yaml, then -f conditions.yaml" -}}
{{- end -}}
{{- else -}}
{{- $want := include "gpu-webhook.conditionInputs" . -}}
{{- $have := toJson (get $mc "for") -}}
{{- if ne $want $have -}}
{{- fail (printf "webhooks.matchConditions were generated for a policy with %s, but the policy has %s: generate them for this policy with gpu-webhook policy conditions --helm-values YOUR_POLICY > conditions.yaml, then -f conditions.yaml (otherwise some of the policy's rules would never be sent pods)" $have $want) -}}
{{- end -}}
{{- end -}}
{{- /* Values generated before the template webhook existed: its conditions for a policy without
DRA claim profiles (those are the same for every such policy; with claim profiles the check
above has refused such values, since their inputs lack claimTemplates). */ -}}
{{- if not (hasKey $mc "templates") -}}
{{- $mc = merge (dict "templates" (.Files.Get "files/match-conditions.yaml" | fromYaml).templates) $mc -}}
{{- end -}}
{{- /* Values generated before the claim webhook existed: its conditions are the same for every policy. */ -}}
{{- if not (hasKey $mc "claims") -}}
{{- $mc = merge (dict "claims" (.Files.Get "files/match-conditions.yaml" | fromYaml).claims) $mc -}}
{{- end -}}
{{- toJson $mc -}}
{{- end -}}

{{/*
The namespaces the policy's tenants match by name (`match[].namespace`): GPU pods are created
there by tenants, so none of them may be excluded from the webhook (the release's namespace is
excluded always) or hold the quota ledger (a tenant with `edit` there could rewrite it). Nor may
`default`, where `helm install` without --namespace puts a release and where many users have
`edit`. With policy.existingConfigMap the chart cannot read the policy: only `default` is checked.
*/}}
{{- define "gpu-webhook.tenantNamespaces" -}}
{{- $found := list -}}
{{- if not .Values.policy.existingConfigMap -}}
{{- $spec := (include "gpu-webhook.policy" . | fromYaml).spec | default dict -}}
{{- range $name, $tenant := ($spec.tenants | default dict) -}}
{{- range $m := ($tenant.match | default list) -}}
{{- if $m.namespace }}{{ $found = append $found (toString $m.namespace) }}{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson ($found | uniq | sortAlpha) -}}
{{- end -}}

{{- define "gpu-webhook.checkNamespaces" -}}
{{- $tenants := include "gpu-webhook.tenantNamespaces" . | fromJsonArray -}}
{{- if eq .Release.Namespace "default" -}}
{{- fail "the release's namespace is always excluded from the webhook, and this release is in \"default\" (helm install without --namespace): every pod created there would get GPUs with no profile, quota or security rule. Install into a namespace of its own: --namespace gpu-webhook --create-namespace" -}}
{{- end -}}
{{- if has .Release.Namespace $tenants -}}
{{- fail (printf "the release's namespace is always excluded from the webhook, and the policy's tenants create GPU pods in %q: they would escape every rule and quota. Install into a namespace of its own: --namespace gpu-webhook --create-namespace" .Release.Namespace) -}}
{{- end -}}
{{- range (.Values.webhooks.excludedNamespaces | default list) -}}
{{- if has . $tenants -}}
{{- fail (printf "webhooks.excludedNamespaces lists %q, where the policy's tenants create GPU pods: they would escape every rule and quota. Exclude only namespaces whose pod creators you trust as cluster admins" .) -}}
{{- end -}}
{{- end -}}
{{- if .Values.trackUsage.enabled -}}
{{- $ledger := .Values.trackUsage.ledgerNamespace -}}
{{- if eq $ledger .Release.Namespace -}}
{{- fail (printf "trackUsage.ledgerNamespace %q is the release's namespace: the webhook's ConfigMap write access would reach its own policy ConfigMap. Give the ledger a namespace of its own (default: gpu-webhook-ledger)" $ledger) -}}
{{- end -}}
{{- if or (eq $ledger "default") (has $ledger $tenants) -}}
{{- fail (printf "trackUsage.ledgerNamespace %q is a namespace whose users may write ConfigMaps (default, or a tenant's): they could erase reservations (over-admission) or block every quota-bound pod. Give the ledger a namespace of its own" $ledger) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Namespaces never sent to the webhook: the release's own always. */}}
{{- define "gpu-webhook.namespaceSelector" -}}
{{- include "gpu-webhook.checkNamespaces" . -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values:
      {{- range (concat (.Values.webhooks.excludedNamespaces | default list) (list .Release.Namespace) | uniq) }}
      - {{ . | quote }}
      {{- end }}
  {{- with .Values.webhooks.exemptNamespaceLabel }}
  - key: {{ . | quote }}
    operator: DoesNotExist
  {{- end }}
{{- end -}}

{{/* The caBundle of both webhooks, for the modes that know it at render time. */}}
{{- define "gpu-webhook.clientConfig" -}}
{{- $root := index . 0 -}}
{{- $path := index . 1 -}}
{{- if $root.Values.webhooks.url }}
url: {{ printf "%s%s" (trimSuffix "/" $root.Values.webhooks.url) $path | quote }}
{{- else }}
service:
  name: {{ include "gpu-webhook.fullname" $root }}
  namespace: {{ $root.Release.Namespace }}
  path: {{ $path }}
  port: 443
{{- end }}
{{- if eq $root.Values.certificates.mode "existingSecret" }}
caBundle: {{ $root.Values.certificates.existingSecret.caBundle | quote }}
{{- end }}
{{- end -}}

{{- define "gpu-webhook.webhookAnnotations" -}}
{{- if eq .Values.certificates.mode "certManager" }}
annotations:
  cert-manager.io/inject-ca-from: {{ printf "%s/%s" .Release.Namespace (include "gpu-webhook.secretName" .) }}
{{- end }}
{{- end -}}

{{- define "gpu-webhook.common" -}}
admissionReviewVersions: [v1]
failurePolicy: {{ .Values.webhooks.failurePolicy }}
timeoutSeconds: {{ .Values.webhooks.timeoutSeconds }}
matchPolicy: Equivalent
namespaceSelector:
  {{- include "gpu-webhook.namespaceSelector" . | nindent 2 }}
{{- end -}}

{{/* The serving Secret (tls.crt, tls.key, ca.crt): <fullname>-tls unless named. */}}
{{- define "gpu-webhook.secretName" -}}
{{- .Values.certificates.secretName | default (printf "%s-tls" (include "gpu-webhook.fullname" .)) -}}
{{- end -}}
