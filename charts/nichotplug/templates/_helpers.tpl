{{/* Chart name, overridable. */}}
{{- define "nichotplug.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: also the name of both webhook configurations and the Service. */}}
{{- define "nichotplug.fullname" -}}
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

{{- define "nichotplug.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the pods: never change them on upgrade (selectors are immutable). */}}
{{- define "nichotplug.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nichotplug.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nichotplug.labels" -}}
helm.sh/chart: {{ include "nichotplug.chart" . }}
{{ include "nichotplug.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: harvester
{{- end }}

{{- define "nichotplug.serviceAccountName" -}}
{{- include "nichotplug.fullname" . }}
{{- end }}

{{- define "nichotplug.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "nichotplug.fullname" .)) .Values.certificates.secretName }}
{{- end }}

{{/* The controller's leader-election Lease, named after its scope as nichotplug/controller/scope.py
ControllerScope.lease_name names it: the plain name for every namespace, else a digest of the sorted list. */}}
{{- define "nichotplug.leaseName" -}}
{{- $namespaces := .Values.controller.namespaces | default list | uniq | sortAlpha -}}
{{- if $namespaces -}}
nichotplug-controller-{{ $namespaces | join "," | sha256sum | trunc 10 }}
{{- else -}}
nichotplug-controller
{{- end -}}
{{- end }}

{{/* The APIService of the subresource API; its name is fixed by the API group it serves. */}}
{{- define "nichotplug.apiServiceName" -}}
v1.subresources.nichotplug.io
{{- end }}

{{- define "nichotplug.selfManagedCerts" -}}
{{- if eq .Values.certificates.mode "self-managed" }}true{{ end }}
{{- end }}

{{/* Where the serving certificate is read from (an emptyDir in self-managed mode, the Secret otherwise). */}}
{{- define "nichotplug.tlsDir" -}}
/run/nichotplug/tls
{{- end }}

{{/* The cert-manager Certificate that signs the serving certificate (cert-manager mode). */}}
{{- define "nichotplug.servingCertificate" -}}
{{- printf "%s-serving" (include "nichotplug.fullname" .) }}
{{- end }}

{{/* Webhook pieces shared by both configurations. */}}
{{/* Namespaces whose VMs the webhooks never see (a JSON list): kube-system and webhook.excludeNamespaces.
The release namespace is not among them unless listed: installed elsewhere than harvester-system (which
the default list holds), the chart must not leave that namespace's VMs unchecked. */}}
{{- define "nichotplug.excludedNamespaces" -}}
{{- concat (list "kube-system") .Values.webhook.excludeNamespaces | uniq | toJson }}
{{- end }}

{{- define "nichotplug.webhookCommon" -}}
admissionReviewVersions: ["v1"]
sideEffects: None
matchPolicy: Equivalent
timeoutSeconds: {{ .Values.webhook.timeoutSeconds }}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values:
        {{- range include "nichotplug.excludedNamespaces" . | fromJsonArray }}
        - {{ . | quote }}
        {{- end }}
{{- /* registration.MATCH_CONDITIONS: a VM being deleted is left as it is, and its deletion must not wait for us. */}}
matchConditions:
  - name: not-being-deleted
    expression: "!has(object.metadata.deletionTimestamp)"
{{- end }}

{{/* The rules both webhooks are registered for: nichotplug/webhook/registration.py declares them. */}}
{{- define "nichotplug.webhookRules" -}}
rules:
  - apiGroups: ["kubevirt.io"]
    apiVersions: ["v1"]
    resources: ["virtualmachines"]
    operations: ["CREATE", "UPDATE"]
    scope: Namespaced
{{- end }}
