{{/* Labels that select the upload service's Pods. */}}
{{- define "imageimport.uploadSelectorLabels" -}}
app.kubernetes.io/name: {{ include "imageimport.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: upload-server
{{- end }}

{{/* Labels of the upload service's objects. */}}
{{- define "imageimport.uploadLabels" -}}
helm.sh/chart: {{ include "imageimport.chart" . }}
{{ include "imageimport.uploadSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: imageimport
{{- end }}

{{- define "imageimport.uploadName" -}}
{{ include "imageimport.fullname" . }}-upload
{{- end }}

{{/* The in-cluster base URL workers pull from. */}}
{{- define "imageimport.uploadInternalURL" -}}
{{- if .Values.upload.internalUrl }}
{{- .Values.upload.internalUrl | trimSuffix "/" }}
{{- else }}
{{- printf "http://%s.%s.svc:%d" (include "imageimport.uploadName" .) .Release.Namespace (int .Values.upload.service.port) }}
{{- end }}
{{- end }}

{{/* The base URL users are given: upload.url, else the Ingress host, else the workers'. */}}
{{- define "imageimport.uploadURL" -}}
{{- if .Values.upload.url }}
{{- .Values.upload.url | trimSuffix "/" }}
{{- else if and .Values.upload.ingress.enabled .Values.upload.ingress.host }}
{{- if .Values.upload.ingress.tls }}https{{ else }}http{{ end }}://{{ .Values.upload.ingress.host }}
{{- else }}
{{- include "imageimport.uploadInternalURL" . }}
{{- end }}
{{- end }}
