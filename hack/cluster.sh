#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, with the operator installed by Helm.
#
#   hack/cluster.sh up      start everything (idempotent: what runs already is kept), then print
#                           `export NAME=value` lines on stdout (progress goes to stderr):
#                           eval "$(hack/cluster.sh up)"
#   hack/cluster.sh env     print the exports of a running cluster again (with UPLOAD_URL, the
#                           upload service's base URL and web console: http://NODE_IP:30080)
#   hack/cluster.sh restart-containerd   (a fault the tests inject)
#   hack/cluster.sh down    stop everything and leave nothing behind (processes, shims, mounts,
#                           cgroups, bridge, iptables rules, sysctls), so `up` works again
#
# What runs (all built here from official sources, none downloaded prebuilt): etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler and kubelet v1.34 (Go modules, see
# hack/build-test-bins.sh), Debian's containerd + runc + CNI bridge plugin, two Debian
# docker-registry instances (plain HTTP, and TLS + htpasswd) on the node's own address, the
# operator image (hack/build-image.sh, pushed with `imageimport push`) and the chart installed with
# `helm upgrade --install` with the upload service (plain HTTP on the node's address, a hostPort
# of its Pod; workers pull from it there too, as Pods have no cluster DNS). Pods reach only
# this machine: a firewall rule drops what they send elsewhere, and they get no DNS server (use
# IP addresses).
#
# Needs root, cgroup v1 or v2 with cgroupfs, and a local IPv4 address other than loopback
# (IMAGEIMPORT_NODE_IP, default: the source address of the default route).
# Env: IMAGEIMPORT_CLUSTER_DIR (state, default /var/tmp/imageimport-cluster),
#      IMAGEIMPORT_BINARY (binary put in the image; default: cargo build --release),
#      IMAGEIMPORT_TESTBIN_DIR (Go binaries, default ~/.cache/imageimport/testbin),
#      IMAGEIMPORT_CLUSTER_INSTALL=0 (do not apt-get install / build missing tools).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${IMAGEIMPORT_CLUSTER_DIR:-/var/tmp/imageimport-cluster}"
TESTBIN="${IMAGEIMPORT_TESTBIN_DIR:-$HOME/.cache/imageimport/testbin}"
NODE_NAME=imageimport-node
BRIDGE=iibr0                       # not cni0: podman's and others' default
POD_CIDR=10.244.0.0/24 POD_GW=10.244.0.1
SVC_CIDR=10.96.0.0/24 KUBE_SVC_IP=10.96.0.1
ETCD_PORT=32379 ETCD_PEER_PORT=32380
API_PORT=6443 KCM_PORT=10257 SCHED_PORT=10259
KUBELET_PORT=10250 KUBELET_HEALTHZ_PORT=10248
REGISTRY_PORT=5000 TLS_REGISTRY_PORT=5443
# The upload service's Pod, on the node's address (a hostPort: the CNI portmap plugin's DNAT
# follows the Pod wherever it is restarted; there is no kube-proxy for a NodePort).
UPLOAD_PORT=30080
REGISTRY_USER=imageimport
RELEASE=imageimport RELEASE_NS=imageimport-system
CHAIN_EGRESS=IMAGEIMPORT-EGRESS CHAIN_SVC=IMAGEIMPORT-SVC
KERNEL_SYSCTLS=(kernel.panic kernel.panic_on_oops vm.overcommit_memory net.ipv4.ip_forward)
DEB_PACKAGES=(containerd runc containernetworking-plugins iptables iproute2 docker-registry skopeo
  apache2-utils openssl ca-certificates jq python3 busybox-static gcc libc6-dev binutils util-linux)

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

node_ip() {
  if [[ -n "${IMAGEIMPORT_NODE_IP:-}" ]]; then echo "$IMAGEIMPORT_NODE_IP"; return; fi
  ip -4 route get 192.0.2.255 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -1 | grep . ||
    ip -4 -o addr show scope global | awk '{ split($4, a, "/"); print a[1]; exit }'
}

# --- processes ------------------------------------------------------------------------------
pidfile() { echo "$STATE/pids/$1"; }

# alive NAME: the recorded PID runs and is still the program we started.
alive() {
  local f pid; f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ -d "/proc/$pid" ]] && [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *"$STATE"* ]]
}

# start NAME CMD...: a daemon in its own session, log in $STATE/logs/NAME.log. The command line
# must mention $STATE (alive() checks that, so a reused PID is never taken for ours).
start() {
  local name="$1"; shift
  if alive "$name"; then log "$name: running (pid $(cat "$(pidfile "$name")"))"; return; fi
  log "$name: starting"
  # Not a process group leader (no job control here), so setsid execs in place and $! is the
  # daemon's own PID.
  setsid "$@" </dev/null >>"$STATE/logs/$name.log" 2>&1 &
  echo $! >"$(pidfile "$name")"
}

stop() { # NAME [signal]
  local name="$1" sig="${2:-TERM}" pid i
  alive "$name" || { rm -f "$(pidfile "$name")"; return 0; }
  pid="$(cat "$(pidfile "$name")")"
  log "$name: stopping (pid $pid)"
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
  if [[ -d /proc/$pid ]]; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
  rm -f "$(pidfile "$name")"
}

# wait_for WHAT SECONDS CMD...: polls CMD until it succeeds; shows the log tail on timeout.
wait_for() {
  local what="$1" secs="$2" i; shift 2
  for ((i = 0; i < secs * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "$what: not ready after ${secs}s"
  [[ -f "$STATE/logs/$what.log" ]] && tail -n 30 "$STATE/logs/$what.log" >&2
  return 1
}

# kubectl of this machine, else the one hack/build-test-bins.sh builds with the node components.
kubectl_bin() { command -v kubectl || echo "$TESTBIN/kubectl"; }
kctl() { "$(kubectl_bin)" --kubeconfig "$STATE/kubeconfig" "$@"; }

# --- installation ---------------------------------------------------------------------------
install_prereqs() {
  local need=() p
  for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if ((${#need[@]})); then
    [[ "${IMAGEIMPORT_CLUSTER_INSTALL:-1}" != 0 ]] || die "missing Debian packages: ${need[*]}"
    log "apt-get install ${need[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
  fi
  local missing=0
  for p in etcd kube-apiserver kubelet kube-controller-manager kube-scheduler helm; do
    [[ -x "$TESTBIN/$p" ]] || missing=1
  done
  [[ -x "$(kubectl_bin)" ]] || missing=1
  if ((missing)); then
    [[ "${IMAGEIMPORT_CLUSTER_INSTALL:-1}" != 0 ]] || die "missing Go binaries in $TESTBIN"
    log "building Go binaries (hack/build-test-bins.sh; cold: about 15-30 min on 2 cores)"
    IMAGEIMPORT_TESTBIN_DIR="$TESTBIN" "$ROOT/hack/build-test-bins.sh" etcd kube-apiserver kube-node helm >/dev/null
  fi
}

# --- certificates and kubeconfigs -----------------------------------------------------------
issue() { # NAME SUBJECT EXTENDED-KEY-USAGE [SANS]
  local d="$STATE/pki" name="$1" subj="$2" eku="$3" sans="${4:-}"
  [[ -f "$d/$name.crt" ]] && return
  openssl req -new -newkey rsa:2048 -nodes -keyout "$d/$name.key" -subj "$subj" -out "$d/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -n "$sans" ]] && echo "subjectAltName=$sans"
  } >"$d/$name.ext"
  openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$d/$name.ext" -out "$d/$name.crt" 2>/dev/null
  rm -f "$d/$name.csr" "$d/$name.ext"
}

write_kubeconfig() { # FILE CERT-NAME
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: imageimport
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority-data: $(base64 -w0 "$STATE/pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$STATE/pki/$2.crt")
    client-key-data: $(base64 -w0 "$STATE/pki/$2.key")
contexts:
- name: imageimport
  context: {cluster: imageimport, user: $2}
current-context: imageimport
EOF
  chmod 600 "$1"
}

make_pki() {
  local d="$STATE/pki"
  mkdir -p "$d"
  if [[ ! -f "$d/ca.crt" ]]; then
    log "certificates"
    openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$d/ca.key" -subj "/CN=imageimport-cluster-ca" \
      -days 365 -sha256 -addext basicConstraints=critical,CA:TRUE \
      -addext keyUsage=critical,keyCertSign,cRLSign -out "$d/ca.crt" 2>/dev/null
  fi
  issue apiserver "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,IP:$NODE_IP,IP:$KUBE_SVC_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  issue admin "/O=system:masters/CN=imageimport-admin" clientAuth
  issue kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  issue apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client" clientAuth
  issue kubelet-serving "/CN=$NODE_NAME" serverAuth "IP:$NODE_IP,DNS:$NODE_NAME"
  issue registry "/CN=$NODE_IP" serverAuth "IP:$NODE_IP,IP:127.0.0.1,DNS:localhost"
  [[ -f "$d/sa.key" ]] || {
    openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
    openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  }
  write_kubeconfig "$STATE/kubeconfig" admin
  write_kubeconfig "$STATE/kubelet.kubeconfig" kubelet
}

# --- host networking ------------------------------------------------------------------------
save_sysctls() {
  [[ -f "$STATE/sysctl.saved" ]] && return
  local k
  for k in "${KERNEL_SYSCTLS[@]}"; do echo "$k=$(sysctl -n "$k")"; done >"$STATE/sysctl.saved"
}

restore_sysctls() {
  [[ -f "$STATE/sysctl.saved" ]] || return 0
  local line
  while read -r line; do sysctl -qw "$line" >/dev/null || true; done <"$STATE/sysctl.saved"
}

ipt() { iptables -w 5 "$@"; }

firewall_up() {
  sysctl -qw net.ipv4.ip_forward=1
  # Egress: Pods may talk to each other and to this machine's own addresses (INPUT, not
  # FORWARD); anything forwarded elsewhere is dropped.
  ipt -N "$CHAIN_EGRESS" 2>/dev/null || true
  ipt -F "$CHAIN_EGRESS"
  ipt -A "$CHAIN_EGRESS" -s "$POD_CIDR" -d "$POD_CIDR" -j RETURN
  ipt -A "$CHAIN_EGRESS" -s "$POD_CIDR" -j DROP
  ipt -A "$CHAIN_EGRESS" -d "$POD_CIDR" -m conntrack ! --ctstate RELATED,ESTABLISHED -j DROP
  ipt -C FORWARD -j "$CHAIN_EGRESS" 2>/dev/null || ipt -I FORWARD 1 -j "$CHAIN_EGRESS"
  ip6tables -w 5 -C FORWARD -i "$BRIDGE" -j DROP 2>/dev/null || ip6tables -w 5 -I FORWARD 1 -i "$BRIDGE" -j DROP
  # The `kubernetes` Service without kube-proxy: its ClusterIP is the API server on the node.
  ipt -t nat -N "$CHAIN_SVC" 2>/dev/null || true
  ipt -t nat -F "$CHAIN_SVC"
  ipt -t nat -A "$CHAIN_SVC" -d "$KUBE_SVC_IP/32" -p tcp --dport 443 -j DNAT --to-destination "$NODE_IP:$API_PORT"
  ipt -t nat -C PREROUTING -j "$CHAIN_SVC" 2>/dev/null || ipt -t nat -I PREROUTING 1 -j "$CHAIN_SVC"
  ipt -t nat -C OUTPUT -j "$CHAIN_SVC" 2>/dev/null || ipt -t nat -I OUTPUT 1 -j "$CHAIN_SVC"
}

firewall_down() {
  while ipt -D FORWARD -j "$CHAIN_EGRESS" 2>/dev/null; do :; done
  ipt -F "$CHAIN_EGRESS" 2>/dev/null && ipt -X "$CHAIN_EGRESS" 2>/dev/null || true
  while ip6tables -w 5 -D FORWARD -i "$BRIDGE" -j DROP 2>/dev/null; do :; done
  while ipt -t nat -D PREROUTING -j "$CHAIN_SVC" 2>/dev/null; do :; done
  while ipt -t nat -D OUTPUT -j "$CHAIN_SVC" 2>/dev/null; do :; done
  ipt -t nat -F "$CHAIN_SVC" 2>/dev/null && ipt -t nat -X "$CHAIN_SVC" 2>/dev/null || true
  # The portmap plugin's hostPort chains: containers killed in `down` get no CNI DEL. Its
  # per-container chains are ours when they name our Pod network; the shared ones go once empty.
  local cmd t c
  for c in $(ipt -t nat -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^CNI-DN-/ { print $2 }'); do
    ipt -t nat -S "$c" 2>/dev/null | grep -q -- "${POD_CIDR%.*}\." || continue
    ipt -t nat -S CNI-HOSTPORT-DNAT 2>/dev/null | grep -- "-j $c\b" | sed 's/^-A/-D/' |
      while read -r rule; do eval "ipt -t nat $rule" 2>/dev/null || true; done
    ipt -t nat -F "$c" 2>/dev/null && ipt -t nat -X "$c" 2>/dev/null || true
  done
  if [[ "$(ipt -t nat -S CNI-HOSTPORT-DNAT 2>/dev/null | wc -l)" == 1 ]]; then
    for c in PREROUTING OUTPUT; do
      ipt -t nat -S "$c" | grep -- "-j CNI-HOSTPORT-DNAT" | sed 's/^-A/-D/' |
        while read -r rule; do eval "ipt -t nat $rule" 2>/dev/null || true; done
    done
    ipt -t nat -S POSTROUTING | grep -- "-j CNI-HOSTPORT-MASQ" | sed 's/^-A/-D/' |
      while read -r rule; do eval "ipt -t nat $rule" 2>/dev/null || true; done
    for c in CNI-HOSTPORT-DNAT CNI-HOSTPORT-SETMARK CNI-HOSTPORT-MASQ; do
      ipt -t nat -F "$c" 2>/dev/null && ipt -t nat -X "$c" 2>/dev/null || true
    done
  fi
  # The kubelet's own chains (it runs here only as ours).
  for cmd in iptables ip6tables; do
    while $cmd -w 5 -D INPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    while $cmd -w 5 -D OUTPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    for t in filter nat mangle; do
      for c in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
        $cmd -w 5 -t "$t" -F "$c" 2>/dev/null && $cmd -w 5 -t "$t" -X "$c" 2>/dev/null || true
      done
    done
  done
}

# --- components -----------------------------------------------------------------------------
start_etcd() {
  start etcd "$TESTBIN/etcd" --name=imageimport --data-dir="$STATE/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="imageimport=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls= \
    --unsafe-no-fsync=true --log-level=warn
  wait_for etcd 60 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
}

start_apiserver() {
  local p="$STATE/pki"
  start kube-apiserver "$TESTBIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$API_PORT" \
    --cert-dir="$STATE/apiserver" --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" --service-cluster-ip-range="$SVC_CIDR" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$p/sa.pub" \
    --service-account-signing-key-file="$p/sa.key" \
    --kubelet-client-certificate="$p/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$p/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP --allow-privileged=false --profiling=false
  wait_for kube-apiserver 120 kctl get --raw /readyz
  # The API server's client identity for logs/exec on the kubelet.
  kctl get clusterrolebinding imageimport:kubelet-api-admin >/dev/null 2>&1 ||
    kctl create clusterrolebinding imageimport:kubelet-api-admin --clusterrole=system:kubelet-api-admin \
      --user=kube-apiserver-kubelet-client >/dev/null
}

start_controllers() {
  local p="$STATE/pki"
  start kube-controller-manager "$TESTBIN/kube-controller-manager" --kubeconfig="$STATE/kubeconfig" \
    --leader-elect=false --controllers='*' --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
    --cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
    --service-cluster-ip-range="$SVC_CIDR"
  cat >"$STATE/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $STATE/kubeconfig
leaderElection:
  leaderElect: false
EOF
  start kube-scheduler "$TESTBIN/kube-scheduler" --config="$STATE/scheduler.yaml" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT"
}

write_containerd_config() {
  local c="$STATE/containerd"
  mkdir -p "$c/certs.d/$NODE_IP:$REGISTRY_PORT" "$STATE/cni/net.d" "$STATE/runc"
  cat >"$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[debug]
  address = "$c/debug.sock"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  disable_hugetlb_controller = true
  tolerate_missing_hugetlb_controller = true
  # No CAP_SYS_RESOURCE in this VM: scores below containerd's own cannot be set.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$STATE/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$c/certs.d"
EOF
  # The operator image comes from the plain-HTTP registry on the node.
  cat >"$c/certs.d/$NODE_IP:$REGISTRY_PORT/hosts.toml" <<EOF
server = "http://$NODE_IP:$REGISTRY_PORT"
[host."http://$NODE_IP:$REGISTRY_PORT"]
  capabilities = ["pull", "resolve"]
EOF
  cat >"$STATE/cni/net.d/10-imageimport.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "imageimport", "plugins": [{"type": "bridge", "bridge": "$BRIDGE",
  "isGateway": true, "ipMasq": false, "hairpinMode": true,
  "ipam": {"type": "host-local", "dataDir": "$STATE/cni/ipam",
    "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GW"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
}

ctr_() { ctr --address "$STATE/containerd/containerd.sock" -n k8s.io "$@"; }

start_containerd() {
  write_containerd_config
  if [[ ! -f "$STATE/run-containerd-s.before" ]]; then
    ls /run/containerd/s 2>/dev/null >"$STATE/run-containerd-s.before" || true
  fi
  start containerd containerd --config "$STATE/containerd/config.toml"
  wait_for containerd 60 bash -c "ctr --address '$STATE/containerd/containerd.sock' plugins ls | grep -E '\\bcri\\b.*ok'"
}

# Images the node has without pulling: pause (built from the Kubernetes module's pause.c) and
# busybox (Debian's static busybox, for the README's copy Pod).
import_node_images() {
  local img="$STATE/images" modcache src
  mkdir -p "$img"
  # (grep without -q: with pipefail, ctr killed by SIGPIPE would read as "not there".)
  if ! ctr_ images ls -q | grep -x registry.k8s.io/pause:3.10 >/dev/null; then
    modcache="$(go env GOMODCACHE 2>/dev/null || /usr/local/go/bin/go env GOMODCACHE)"
    src="$(ls -d "$modcache"/k8s.io/kubernetes@v1.34.*/build/pause/linux/pause.c 2>/dev/null | tail -1)"
    [[ -f "$src" ]] || die "pause.c not found in the Go module cache ($modcache)"
    gcc -Os -Wall -Werror -static -DVERSION=v3.10-imageimport -o "$img/pause" "$src"
    strip "$img/pause"
    python3 "$ROOT/hack/oci-image.py" --out "$img/pause.tar" --name registry.k8s.io/pause:3.10 \
      --entrypoint '["/pause"]' --user 65535:65535 --file "$img/pause:/pause:0755" >/dev/null
    ctr_ images import "$img/pause.tar" >>"$STATE/logs/images.log"
  fi
  if ! ctr_ images ls -q | grep -x docker.io/library/busybox:1.36 >/dev/null; then
    local a args=(--out "$img/busybox.tar" --name docker.io/library/busybox:1.36 --cmd '["sh"]'
      --file /bin/busybox:/bin/busybox:0755 --dir /tmp:1777
      --text "/etc/passwd:0644:root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/:/bin/false
" --text "/etc/group:0644:root:x:0:
nobody:x:65534:
")
    for a in $(/bin/busybox --list); do [[ "$a" == busybox ]] || args+=(--symlink "/bin/$a:busybox"); done
    python3 "$ROOT/hack/oci-image.py" "${args[@]}" >/dev/null
    ctr_ images import "$img/busybox.tar" >>"$STATE/logs/images.log"
  fi
}

start_kubelet() {
  local k="$STATE/kubelet"
  mkdir -p "$k" "$STATE/pod-logs"
  cat >"$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$STATE/containerd/containerd.sock
cgroupDriver: cgroupfs
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $STATE/pki/kubelet-serving.crt
tlsPrivateKeyFile: $STATE/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization:
  mode: Webhook
# No DNS in Pods: they use IP addresses, and must not reach this machine's resolver.
clusterDNS: []
resolvConf: ""
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 200Mi
  nodefs.available: 1Gi
  nodefs.inodesFree: 1%
  imagefs.available: 1Gi
rotateCertificates: false
serverTLSBootstrap: false
podLogsDir: $STATE/pod-logs
maxPods: 50
EOF
  start kubelet "$TESTBIN/kubelet" --config="$STATE/kubelet.yaml" --kubeconfig="$STATE/kubelet.kubeconfig" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --root-dir="$k" --cert-dir="$STATE/kubelet-pki"
  wait_for kubelet 120 node_ready
  # The kubelet sets these once at start (panic on oops, overcommit); this machine keeps its own.
  restore_sysctls
  sysctl -qw net.ipv4.ip_forward=1
}

node_ready() {
  [[ "$(kctl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]] &&
    [[ -z "$(kctl get node "$NODE_NAME" -o jsonpath='{.spec.taints}')" ]] &&
    kctl get serviceaccount default -n default
}

start_registries() {
  local r="$STATE/registry"
  mkdir -p "$r/plain" "$r/tls"
  [[ -f "$r/htpasswd" ]] || {
    head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$r/password"
    htpasswd -Bbn "$REGISTRY_USER" "$(cat "$r/password")" >"$r/htpasswd"
  }
  cat >"$r/plain.yml" <<EOF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $r/plain}, delete: {enabled: true}}
http: {addr: "$NODE_IP:$REGISTRY_PORT", secret: imageimport-cluster}
EOF
  cat >"$r/tls.yml" <<EOF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $r/tls}, delete: {enabled: true}}
http:
  addr: "$NODE_IP:$TLS_REGISTRY_PORT"
  secret: imageimport-cluster
  tls: {certificate: $STATE/pki/registry.crt, key: $STATE/pki/registry.key}
auth: {htpasswd: {realm: imageimport, path: $r/htpasswd}}
EOF
  # REGISTRY_* variables would override the config files.
  local clean=(env) v
  for v in $(compgen -e); do [[ "$v" == REGISTRY_* ]] && clean+=(-u "$v"); done
  start registry "${clean[@]}" docker-registry serve "$r/plain.yml"
  start registry-tls "${clean[@]}" docker-registry serve "$r/tls.yml"
  wait_for registry 30 curl -fsS "http://$NODE_IP:$REGISTRY_PORT/v2/"
  wait_for registry-tls 30 curl -sS --cacert "$STATE/pki/ca.crt" "https://$NODE_IP:$TLS_REGISTRY_PORT/v2/"
}

# The operator image: built without a daemon, pushed with imageimport itself.
push_operator_image() {
  local bin="${IMAGEIMPORT_BINARY:-}" out="$STATE/images/imageimport.tar" digest
  if [[ -z "$bin" ]]; then
    log "cargo build --release --bin imageimport"
    (cd "$ROOT" && cargo build --release --locked --bin imageimport >&2)
    bin="$ROOT/target/release/imageimport"
  fi
  digest="$(IMAGEIMPORT_BINARY="$bin" "$ROOT/hack/build-image.sh" "$out" imageimport:dev)"
  # Tag by content, so a new binary is a new tag and IfNotPresent pulls it.
  IMAGE_TAG="dev-${digest#sha256:}" IMAGE_TAG="${IMAGE_TAG:0:16}"
  "$bin" push --insecure -q "$out" "$NODE_IP:$REGISTRY_PORT/imageimport/imageimport:$IMAGE_TAG" >&2
  echo "$IMAGE_TAG" >"$STATE/image-tag"
}

install_chart() {
  local tag; tag="$(cat "$STATE/image-tag")"
  log "helm upgrade --install $RELEASE (image $NODE_IP:$REGISTRY_PORT/imageimport/imageimport:$tag)"
  "$TESTBIN/helm" --kubeconfig "$STATE/kubeconfig" upgrade --install "$RELEASE" "$ROOT/charts/imageimport" \
    -n "$RELEASE_NS" --create-namespace --wait --timeout 10m \
    --set image.repository="$NODE_IP:$REGISTRY_PORT/imageimport/imageimport" --set image.tag="$tag" \
    --set image.pullPolicy=IfNotPresent \
    --set upload.enabled=true --set upload.hostPort="$UPLOAD_PORT" \
    --set upload.url="http://$NODE_IP:$UPLOAD_PORT" --set upload.internalUrl="http://$NODE_IP:$UPLOAD_PORT" \
    >"$STATE/logs/helm.log" 2>&1 || {
    cat "$STATE/logs/helm.log" >&2
    kctl -n "$RELEASE_NS" get pods -o wide >&2 || true
    # What held the release back: the Pods' events and the controller's own words.
    kctl -n "$RELEASE_NS" describe pods >&2 || true
    kctl -n "$RELEASE_NS" get events --sort-by=.lastTimestamp >&2 || true
    kctl -n "$RELEASE_NS" logs --all-containers --prefix --tail=50 -l app.kubernetes.io/instance="$RELEASE" >&2 || true
    die "helm upgrade --install failed (log: $STATE/logs/helm.log)"
  }
}

# The claim `deliveries` of the README's quick start: a hostPath volume on the node, bound to
# shop/deliveries.
make_demo_volume() {
  local dir="$STATE/volumes/deliveries"
  mkdir -p "$dir"
  chown 65532:65532 "$dir"
  kctl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: shop-deliveries}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {namespace: shop, name: deliveries}
  hostPath: {path: $dir, type: Directory}
EOF
}

print_env() {
  local ip; ip="$(cat "$STATE/node-ip")"
  cat <<EOF
export KUBECONFIG=$STATE/kubeconfig
export IMAGEIMPORT_CLUSTER_DIR=$STATE
export NODE_IP=$ip
export REGISTRY=$ip:$REGISTRY_PORT
export TLS_REGISTRY=$ip:$TLS_REGISTRY_PORT
export TLS_REGISTRY_USER=$REGISTRY_USER
export TLS_REGISTRY_PASSWORD=$(cat "$STATE/registry/password")
export TLS_REGISTRY_CA=$STATE/pki/ca.crt
export IMAGEIMPORT_IMAGE=$ip:$REGISTRY_PORT/imageimport/imageimport:$(cat "$STATE/image-tag")
export VOLUMES_DIR=$STATE/volumes
# The README's quick start pushes to TARGET_REGISTRY: here the TLS registry and its CA.
export TARGET_REGISTRY=$ip:$TLS_REGISTRY_PORT
export TARGET_REGISTRY_USER=$REGISTRY_USER
export TARGET_REGISTRY_PASSWORD=$(cat "$STATE/registry/password")
export TARGET_REGISTRY_CA=$STATE/pki/ca.crt
EOF
  # The upload service, when the chart runs it (upload.enabled): the base URL users are given,
  # the controller's --upload-url (what status.upload.url starts with).
  local upload
  upload="$(kctl -n "$RELEASE_NS" get deployments -l app.kubernetes.io/instance="$RELEASE" -o json 2>/dev/null |
    jq -r '[.items[].spec.template.spec.containers[].args[]? | select(startswith("--upload-url=")) | ltrimstr("--upload-url=")][0] // empty' ||
    true)"
  if [[ -n "$upload" ]]; then echo "export UPLOAD_URL=$upload"; fi
}

up() {
  [[ $EUID -eq 0 ]] || die "needs root (kubelet, containerd, iptables)"
  local t0=$SECONDS
  install_prereqs
  NODE_IP="$(node_ip)"
  [[ -n "$NODE_IP" ]] || die "no local IPv4 address for the node (set IMAGEIMPORT_NODE_IP)"
  if [[ -f "$STATE/node-ip" && "$(cat "$STATE/node-ip")" != "$NODE_IP" ]]; then
    die "$STATE was made for node IP $(cat "$STATE/node-ip"); run '$0 down' first"
  fi
  mkdir -p "$STATE"/{pids,logs,volumes}
  echo "$NODE_IP" >"$STATE/node-ip"
  record_host_paths
  log "state in $STATE, node $NODE_NAME at $NODE_IP"
  make_pki
  save_sysctls
  firewall_up
  start_etcd
  start_apiserver
  start_controllers
  start_containerd
  import_node_images
  start_kubelet
  start_registries
  push_operator_image
  make_demo_volume
  install_chart
  log "up in $((SECONDS - t0))s; stop with: $0 down"
  print_env
}

# --- teardown -------------------------------------------------------------------------------
# Host directories the kubelet, CRI and CNI create outside their configured roots. Those that did
# not exist before the first `up` are removed by `down` once empty of what we put there.
HOST_PATHS=(/run/netns /run/containerd /var/lib/cni /var/lib/kubelet /var/log/containers /var/log/pods)

record_host_paths() {
  [[ -f "$STATE/host-paths.created" ]] && return
  local p
  for p in "${HOST_PATHS[@]}"; do [[ -e "$p" ]] || echo "$p"; done >"$STATE/host-paths.created"
}

remove_created_host_paths() {
  [[ -f "$STATE/host-paths.created" ]] || return 0
  local p
  while read -r p; do
    [[ -d "$p" ]] || continue
    umount "$p" 2>/dev/null || true   # `ip netns` bind-mounts /run/netns onto itself
    find "$p" -depth -type d -empty -delete 2>/dev/null || true
  done <"$STATE/host-paths.created"
}

unmount_under() { # PATH-PREFIX: every mount below it, deepest first
  local m
  awk -v p="$1" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

down() {
  [[ $EUID -eq 0 ]] || die "needs root"
  [[ -d "$STATE" ]] || { log "nothing to stop ($STATE does not exist)"; return 0; }
  local t0=$SECONDS netns=() ids=() c pid
  stop kubelet
  if alive containerd; then
    mapfile -t ids < <(ctr_ containers ls -q 2>/dev/null)
    # Sandboxes' network namespaces, to unmount after their tasks are gone.
    mapfile -t netns < <(ctr_ containers ls -q 2>/dev/null | while read -r c; do
      ctr_ containers info "$c" 2>/dev/null | jq -r '.Spec.linux.namespaces[]? | select(.type == "network") | .path // empty'
    done | sort -u)
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true; done
    sleep 0.5
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks rm -f "$c" >/dev/null 2>&1 || true; done
    for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers rm "$c" >/dev/null 2>&1 || true; done
  fi
  stop containerd
  # Shims outlive containerd; ours name our socket on their command line.
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $STATE/" || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  for c in kube-scheduler kube-controller-manager kube-apiserver etcd registry registry-tls; do stop "$c"; done
  unmount_under "$STATE/"
  for c in "${netns[@]}"; do [[ -n "$c" ]] && { umount -l "$c" 2>/dev/null || true; rm -f "$c"; }; done
  # Cgroups the kubelet made for Pods, deepest first.
  find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods -depth -type d -exec rmdir {} \; 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
  firewall_down
  restore_sysctls
  # What the kubelet and CNI write outside their configured directories.
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null || true
  find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete 2>/dev/null || true
  rm -f /var/lib/cni/results/imageimport-* 2>/dev/null || true
  # CRI's loopback network leaves its results too (cni-loopback-<sandbox id>-lo).
  for c in "${ids[@]}"; do [[ -n "$c" ]] && rm -f /var/lib/cni/results/*-"$c"-* 2>/dev/null; done
  if [[ -f "$STATE/run-containerd-s.before" ]]; then
    for c in $(ls /run/containerd/s 2>/dev/null); do
      grep -qx "$c" "$STATE/run-containerd-s.before" || rm -f "/run/containerd/s/$c"
    done
  fi
  remove_created_host_paths
  rm -rf "$STATE"
  log "down in $((SECONDS - t0))s"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) [[ -f "$STATE/image-tag" ]] && alive kube-apiserver || die "no cluster in $STATE"; print_env ;;
  # A fault for the tests: containerd stops and starts again; containers keep running in their shims.
  restart-containerd)
    alive containerd || die "containerd is not running"
    NODE_IP="$(cat "$STATE/node-ip")"
    stop containerd
    start_containerd ;;
  *) echo "usage: $0 up|down|env|restart-containerd" >&2; exit 2 ;;
esac
