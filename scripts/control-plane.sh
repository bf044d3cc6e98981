#!/usr/bin/env bash
# A real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) on
# loopback, for tests and the demo. No Docker: the binaries are built once from Debian
# bookworm's `kubernetes` source package and cached under $KPO_CACHE.
#
#   scripts/control-plane.sh install   apt packages + cached binaries (idempotent)
#   scripts/control-plane.sh up        start everything; prints the kubeconfig path
#   scripts/control-plane.sh down      stop what `up` started (by pid file, never by name)
#   scripts/control-plane.sh env       print `export KUBECONFIG=...` for a running plane
#
# State (certs, data, logs, pids, kubeconfig) lives in $KPO_CLUSTER_DIR (default .cluster/).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${KPO_CACHE:-$HOME/.cache/keypair-operator}
K8S_VERSION=1.20.2
BIN=$CACHE/kubernetes-$K8S_VERSION/bin
STATE=${KPO_CLUSTER_DIR:-$ROOT/.cluster}

log() { printf '[control-plane] %s\n' "$*" >&2; }

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_packages() {
  apt_install golang-go etcd-server rsync dpkg-dev openssl curl golang-github-modern-go-reflect2-dev
  # Machines of this kind ship a kubectl; Debian's is the fallback.
  command -v kubectl >/dev/null || apt_install kubernetes-client
}

ensure_deb_src() {
  local list=/etc/apt/sources.list.d/keypair-operator-src.sources
  if [ ! -f "$list" ]; then
    log "adding a deb-src entry for bookworm main"
    cat >"$list" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -qq
  fi
}

# Go 1.19 is newer than what Kubernetes 1.20 was written for: without these two fixes the
# apiserver segfaults on the first custom-resource create and rejects "" in string fields.
patch_source() {
  local src=$1 reflect2
  reflect2=$(dpkg -L golang-github-modern-go-reflect2-dev | grep '/reflect2.go$' | head -1 | xargs dirname)
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  mkdir -p "$src/vendor/github.com/modern-go/reflect2"
  cp -r "$reflect2"/. "$src/vendor/github.com/modern-go/reflect2/"
  local f
  for f in vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go vendor/github.com/go-openapi/validate/type.go; do
    [ -f "$src/$f" ] || continue
    sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data))/if data == nil/' "$src/$f"
    grep -q 'if data == nil {' "$src/$f" || { log "patch did not apply to $f"; exit 1; }
  done
}

build_binaries() {
  if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ]; then return 0; fi
  install_packages
  ensure_deb_src
  local work=$CACHE/build
  rm -rf "$work"; mkdir -p "$work"
  log "fetching the kubernetes $K8S_VERSION source package"
  (cd "$work" && apt-get source --download-only kubernetes >/dev/null 2>&1)
  (cd "$work" && dpkg-source --no-check -x ./*.dsc src >/dev/null)
  patch_source "$work/src"
  mkdir -p "$work/.go/src/k8s.io"
  ln -sfn "$work/src" "$work/.go/src/k8s.io/kubernetes"
  log "building kube-apiserver and kube-controller-manager (several minutes on 2 cores)"
  (
    cd "$work/.go/src/k8s.io/kubernetes"
    # `make` runs the code generators (openapi definitions) before `go build`.
    export GOPATH=$work/.go GO111MODULE=off CGO_ENABLED=0 GOCACHE=$work/.gocache GOFLAGS=
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$work/make.log" 2>&1 \
      || { tail -30 "$work/make.log" >&2; exit 1; }
    mkdir -p "$work/out"
    cp _output/local/bin/linux/*/kube-apiserver _output/local/bin/linux/*/kube-controller-manager "$work/out/"
  )
  mkdir -p "$BIN"
  mv "$work/out/kube-apiserver" "$work/out/kube-controller-manager" "$BIN/"
  rm -rf "$work"
  log "binaries cached in $BIN"
}

free_port() {
  python3 - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

gen_certs() {
  local pki=$STATE/pki
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=kpo-test-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default\n' >"$pki/san.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 365 -extfile "$pki/san.ext" -out "$pki/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  local token
  token=$(openssl rand -hex 24)
  printf '%s,admin,admin,system:masters\n' "$token" >"$pki/tokens.csv"
  printf '%s' "$token" >"$pki/admin.token"
}

write_kubeconfig() {
  local port=$1 token
  token=$(cat "$STATE/pki/admin.token")
  cat >"$STATE/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $STATE/pki/ca.crt
users:
- name: admin
  user:
    token: $token
contexts:
- name: local
  context: {cluster: local, user: admin, namespace: default}
current-context: local
KC
}

start_bg() { # name, then the command
  local name=$1; shift
  "$@" >"$STATE/logs/$name.log" 2>&1 &
  echo $! >"$STATE/pids/$name"
}

is_up() {
  [ -f "$STATE/kubeconfig" ] && [ -f "$STATE/pids/kube-apiserver" ] \
    && kill -0 "$(cat "$STATE/pids/kube-apiserver")" 2>/dev/null \
    && kubectl --kubeconfig "$STATE/kubeconfig" get --raw /readyz >/dev/null 2>&1
}

up() {
  if is_up; then echo "$STATE/kubeconfig"; return 0; fi
  down >/dev/null 2>&1 || true
  build_binaries
  command -v etcd >/dev/null || install_packages
  rm -rf "$STATE"; mkdir -p "$STATE/logs" "$STATE/pids" "$STATE/etcd"
  gen_certs
  local etcd_port etcd_peer api_port
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port)
  start_bg etcd etcd --data-dir "$STATE/etcd" --name kpo \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "kpo=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync
  local pki=$STATE/pki
  start_bg kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --api-audiences https://kubernetes.default.svc \
    --token-auth-file "$pki/tokens.csv" --authorization-mode RBAC \
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \
    --enable-admission-plugins NamespaceLifecycle,ServiceAccount \
    --disable-admission-plugins StorageObjectInUseProtection,PersistentVolumeLabel
  write_kubeconfig "$api_port"
  local deadline=$((SECONDS + 120))
  until kubectl --kubeconfig "$STATE/kubeconfig" get --raw /readyz >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$(cat "$STATE/pids/kube-apiserver")" 2>/dev/null; then
      log "kube-apiserver did not become ready; last log lines:"; tail -20 "$STATE/logs/kube-apiserver.log" >&2
      down; exit 1
    fi
    sleep 0.5
  done
  start_bg kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE/kubeconfig" --leader-elect=false \
    --controllers=garbagecollector,namespace,serviceaccount,serviceaccount-token \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials=false --bind-address 127.0.0.1 --secure-port 0 --port 0
  # The namespace controller needs the default ServiceAccount machinery; wait until it exists.
  deadline=$((SECONDS + 60))
  until kubectl --kubeconfig "$STATE/kubeconfig" -n default get serviceaccount default >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "kube-controller-manager did not create the default ServiceAccount"; tail -20 "$STATE/logs/kube-controller-manager.log" >&2
      down; exit 1
    fi
    sleep 0.5
  done
  log "control plane ready at https://127.0.0.1:$api_port"
  echo "$STATE/kubeconfig"
}

down() {
  [ -d "$STATE/pids" ] || return 0
  local f pid
  for name in kube-controller-manager kube-apiserver etcd; do
    f=$STATE/pids/$name
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
  log "control plane stopped"
}

case "${1:-}" in
  install) install_packages; build_binaries ;;
  up) up ;;
  down) down ;;
  env) is_up && echo "export KUBECONFIG=$STATE/kubeconfig" ;;
  *) echo "usage: $0 install|up|down|env" >&2; exit 2 ;;
esac
