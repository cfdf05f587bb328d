{{/* "repository:tag" of an image value. */}}
{{- define "weft.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* The port of the health server, 0 when there is none. */}}
{{- define "weft.healthzPort" -}}
{{- int (default 0 .Values.flannel.healthz.port) -}}
{{- end -}}

{{/*
net-conf.json from the flannel values, key for key as flannel's chart maps
them; only the keys of the chosen backend are written.
*/}}
{{- define "weft.netConf" -}}
{{- $f := .Values.flannel -}}
{{- $conf := dict -}}
{{- if .Values.podCidr -}}
{{- $_ := set $conf "Network" .Values.podCidr -}}
{{- else -}}
{{- $_ := set $conf "EnableIPv4" false -}}
{{- end -}}
{{- if .Values.podCidrv6 -}}
{{- $_ := set $conf "IPv6Network" .Values.podCidrv6 -}}
{{- $_ := set $conf "EnableIPv6" true -}}
{{- end -}}
{{- if $f.enableNFTables -}}
{{- $_ := set $conf "EnableNFTables" true -}}
{{- end -}}
{{- $backend := dict "Type" $f.backend -}}
{{- if eq $f.backend "vxlan" -}}
{{- with $f.backendPort }}{{ $_ := set $backend "Port" (int .) }}{{ end -}}
{{- with $f.vni }}{{ $_ := set $backend "VNI" (int .) }}{{ end -}}
{{- with $f.GBP }}{{ $_ := set $backend "GBP" . }}{{ end -}}
{{- with $f.directRouting }}{{ $_ := set $backend "DirectRouting" . }}{{ end -}}
{{- with $f.mtu }}{{ $_ := set $backend "MTU" (int .) }}{{ end -}}
{{- with $f.macPrefix }}{{ $_ := set $backend "MacPrefix" . }}{{ end -}}
{{- else if eq $f.backend "wireguard" -}}
{{- with $f.backendPort }}{{ $_ := set $backend "ListenPort" (int .) }}{{ end -}}
{{- with $f.backendPortv6 }}{{ $_ := set $backend "ListenPortV6" (int .) }}{{ end -}}
{{- with $f.psk }}{{ $_ := set $backend "PSK" . }}{{ end -}}
{{- with $f.mtu }}{{ $_ := set $backend "MTU" (int .) }}{{ end -}}
{{- with $f.tunnelMode }}{{ $_ := set $backend "Mode" . }}{{ end -}}
{{- with $f.keepaliveInterval }}{{ $_ := set $backend "PersistentKeepaliveInterval" (int .) }}{{ end -}}
{{- end -}}
{{- $_ := set $conf "Backend" $backend -}}
{{- toPrettyJson $conf -}}
{{- end -}}
