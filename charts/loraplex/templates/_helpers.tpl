{{/* Names and labels shared by every template. */}}

{{- define "loraplex.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "loraplex.labels" -}}
app.kubernetes.io/name: loraplex
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "loraplex.operatorSelector" -}}
app.kubernetes.io/name: loraplex
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "loraplex.gatewaySelector" -}}
app.kubernetes.io/name: loraplex
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "loraplex.serviceAccountName" -}}
{{- if .Values.serviceAccount.name -}}
{{- .Values.serviceAccount.name -}}
{{- else -}}
{{- printf "%s-operator" (include "loraplex.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "loraplex.operatorImage" -}}
{{- printf "%s:%s" .Values.image.operator.repository (default .Chart.AppVersion .Values.image.operator.tag) -}}
{{- end -}}

{{- define "loraplex.inferenceImage" -}}
{{- printf "%s:%s" .Values.image.inference.repository (default .Chart.AppVersion .Values.image.inference.tag) -}}
{{- end -}}

{{/* Namespaces the operator watches when rbac.scope is namespaced. */}}
{{- define "loraplex.watchNamespaces" -}}
{{- if .Values.rbac.watchNamespaces -}}
{{- join "," .Values.rbac.watchNamespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "loraplex.gatewayNamespace" -}}
{{- default .Release.Namespace .Values.gateway.namespace -}}
{{- end -}}

{{/* The operator's permissions: exactly what it reads and writes, nothing else. */}}
{{- define "loraplex.operatorRules" -}}
# Its own kinds. Pools: kopf keeps its bookkeeping in their annotations (patch). Adapters: only read and watched
# (the operator writes nothing but their status).
- apiGroups: [loraplex.io]
  resources: [basemodelpools]
  verbs: [get, list, watch, patch]
- apiGroups: [loraplex.io]
  resources: [loraadapters]
  verbs: [get, list, watch]
- apiGroups: [loraplex.io]
  resources: [basemodelpools/status, loraadapters/status]
  verbs: [get, patch]
# The autoscaler sizes pools through the scale subresource, as an HPA would.
- apiGroups: [loraplex.io]
  resources: [basemodelpools/scale]
  verbs: [get, patch]
# Owner references with blockOwnerDeletion (garbage collection of pools' objects).
- apiGroups: [loraplex.io]
  resources: [basemodelpools/finalizers]
  verbs: [update]
# What a pool owns, written by server-side apply (create + patch); deleted by the garbage collector, not us.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [services, serviceaccounts]
  verbs: [get, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch]
# The sidecars' read access to the routing table (a Role it must itself hold: configmaps get/list/watch).
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create, patch]
# Ready pods are the routing table's endpoints and the autoscaler's stats sources.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# The routing table shards; delete only when the table shrinks to fewer shards.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, delete]
# Hub tokens, to read private repos' metadata; the namespace's hop key is created once (never updated).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
# Warnings posted by kopf on the objects it handles.
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
