#!/usr/bin/env bash
# The demo (`make demo`): a local control plane, a ThreatWinds sandbox, the operator, and
# the sample in examples/threatwinds.yaml, verified with the `kubectl keypair` plugin and the
# code from the sandbox's outbox. Everything keeps running afterwards; `make demo-down`
# stops it.
#
# Every port is a free loopback port picked at start (the sandbox, the operator's HTTP
# endpoint, the control plane), so other programs on 8080/8090 do not matter. When a
# component dies, the demo says which one and shows the last lines of its log.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=.cluster/demo
CLUSTER=.cluster
log() { printf '\n==> %s\n' "$*"; }

# Components: name, pid file, log file.
COMPONENTS=(
  "sandbox|$DEMO/sandbox.pid|$DEMO/sandbox.log"
  "operator|$DEMO/operator.pid|$DEMO/operator.log"
  "control plane (etcd)|$CLUSTER/pids/etcd|$CLUSTER/logs/etcd.log"
  "control plane (kube-apiserver)|$CLUSTER/pids/kube-apiserver|$CLUSTER/logs/kube-apiserver.log"
  "control plane (kube-controller-manager)|$CLUSTER/pids/kube-controller-manager|$CLUSTER/logs/kube-controller-manager.log"
)
STARTED=()  # names of the components this run expects to be alive

# Prints every expected component that is no longer running, with its log's last lines;
# returns 1 when one died.
report_dead() {
  local entry name pid_file log_file dead=0
  for entry in "${COMPONENTS[@]}"; do
    IFS='|' read -r name pid_file log_file <<<"$entry"
    [[ " ${STARTED[*]:-} " == *" ${name%% *} "* ]] || continue
    if [ ! -f "$pid_file" ] || ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
      dead=1
      printf '\n!! the %s is not running (pid file %s); last lines of %s:\n' "$name" "$pid_file" "$log_file" >&2
      tail -n 20 "$log_file" 2>/dev/null | sed 's/^/   | /' >&2 || echo "   (no log)" >&2
    fi
  done
  return $dead
}

# Fails the demo: the message, then whichever component died (once, even from a
# command substitution, whose failure then reaches on_error).
REPORTED=$DEMO/.failure-reported
fail() {
  printf '\n!! %s\n' "$*" >&2
  report_dead || true
  mkdir -p "$DEMO" && touch "$REPORTED"
  exit 1
}
on_error() {
  local status=$?
  trap - ERR
  if [ ! -f "$REPORTED" ]; then
    printf '\n!! the demo failed (exit %s at line %s)\n' "$status" "$1" >&2
    report_dead || true
  fi
  exit "$status"
}
trap 'on_error $LINENO' ERR

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

log "control plane"
scripts/control-plane.sh install
KUBECONFIG=$(scripts/control-plane.sh up)
export KUBECONFIG
STARTED+=(control)
mkdir -p "$DEMO"
rm -f "$REPORTED"

log "building the operator and the kubectl plugin"
cargo build --quiet --bin keypair-operator --bin kubectl-keypair
BIN=target/debug/keypair-operator
PLUGIN=target/debug/kubectl-keypair

stop_pid() { [ -f "$1" ] && kill "$(cat "$1")" 2>/dev/null || true; rm -f "$1"; }
stop_pid "$DEMO/operator.pid"
stop_pid "$DEMO/sandbox.pid"

PORT=$(free_port)
TOKEN=demo-session-$(openssl rand -hex 16)
log "ThreatWinds sandbox on 127.0.0.1:$PORT"
"$BIN" sandbox --provider threatwinds --listen "127.0.0.1:$PORT" --session-token "$TOKEN" \
  --state-file "$DEMO/sandbox-state.json" >"$DEMO/sandbox.log" 2>&1 &
echo $! >"$DEMO/sandbox.pid"
STARTED+=(sandbox)
ready=""
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/_sandbox/keys" >/dev/null && { ready=yes; break; }
  report_dead >/dev/null 2>&1 || break
  sleep 0.1
done
[ -n "$ready" ] || fail "the sandbox did not answer on 127.0.0.1:$PORT"

log "CRDs"
# The local control plane is Kubernetes 1.20: it does not enforce the CRDs' CEL rules and
# refuses them in a server-side apply, so they are left out (`crds --no-cel`).
"$BIN" crds --no-cel | kubectl apply --server-side --force-conflicts -f - >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null

HTTP_PORT=$(free_port)
log "operator on 127.0.0.1:$HTTP_PORT (log: $DEMO/operator.log)"
"$BIN" run --verification-poll-interval 2s --http-listen "127.0.0.1:$HTTP_PORT" >"$DEMO/operator.log" 2>&1 &
echo $! >"$DEMO/operator.pid"
STARTED+=(operator)
ready=""
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null && { ready=yes; break; }
  report_dead >/dev/null 2>&1 || break
  sleep 0.1
done
[ -n "$ready" ] || fail "the operator's /readyz did not answer on 127.0.0.1:$HTTP_PORT"

log "applying examples/threatwinds.yaml"
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
sed -e "s#url: https://intelligence.threatwinds.com#url: http://127.0.0.1:$PORT#" -e "s#SESSION_TOKEN#$TOKEN#" examples/threatwinds.yaml \
  | kubectl -n demo apply -f -

# Waits until jsonpath $1 of the ApiKeyPair has a value and prints it.
wait_field() {
  local value=""
  for _ in $(seq 1 120); do
    value=$(kubectl -n demo get akp billing-api -o jsonpath="$1" 2>/dev/null || true)
    [ -n "$value" ] && { echo "$value"; return 0; }
    report_dead || fail "a component died while waiting for $1"
    sleep 0.5
  done
  fail "billing-api has no $1 after 60s; see $DEMO/operator.log"
}

# The code the sandbox "emailed" for verification code id $1.
code_for() {
  local outbox
  outbox=$(curl -sf "http://127.0.0.1:$PORT/_sandbox/outbox") || fail "the sandbox's outbox did not answer"
  python3 -c "import json,sys
codes = [m['code'] for m in json.loads(sys.argv[1]) if m['verificationCodeID'] == sys.argv[2]]
sys.exit('no email for verification code id ' + sys.argv[2]) if not codes else print(codes[0])" "$outbox" "$1"
}

log "waiting for the key pair and its verification code"
CODE_ID=$(wait_field '{.status.verificationCodeID}')
kubectl -n demo get akp billing-api
CODE=$(code_for "$CODE_ID")
log "submitting the emailed code from the sandbox outbox: kubectl keypair verify billing-api --code ..."
"$PLUGIN" -n demo verify billing-api --code "$CODE" --timeout 120s
kubectl -n demo wait --for=condition=Ready akp/billing-api --timeout=120s >/dev/null

log "kubectl keypair status"
"$PLUGIN" -n demo status
log "the Secret's keys (the secret value is not printed)"
kubectl -n demo get secret billing-api -o go-template='{{range $k, $v := .data}}{{$k}}{{"\n"}}{{end}}'
printf 'apiKey = %s\n' "$(kubectl -n demo get secret billing-api -o jsonpath='{.data.apiKey}' | base64 -d)"

log "rotating on demand: keypairs.dev/rotate=demo-1 (the new key waits for its code while the old one serves)"
kubectl -n demo patch akp billing-api --type merge \
  -p '{"spec":{"rotation":{"gracePeriod":"20s"}},"metadata":{"annotations":{"keypairs.dev/rotate":"demo-1"}}}' >/dev/null
NEW_CODE_ID=$(wait_field '{.status.pendingKey.verificationCodeID}')
kubectl -n demo get akp billing-api
NEW_CODE=$(code_for "$NEW_CODE_ID")
log "submitting the new key's code: it takes over, the previous key stays valid for the grace period"
"$PLUGIN" -n demo verify billing-api --code "$NEW_CODE" --timeout 120s
wait_field '{.status.previousKey.keyID}' >/dev/null
printf 'apiKey = %s (previous key %s until %s)\n' \
  "$(kubectl -n demo get secret billing-api -o jsonpath='{.data.apiKey}' | base64 -d)" \
  "$(kubectl -n demo get akp billing-api -o jsonpath='{.status.previousKey.keyID}')" \
  "$(kubectl -n demo get akp billing-api -o jsonpath='{.status.previousKey.deleteAfter}')"
log "kubectl keypair inspect billing-api (conditions, events; never a secret)"
"$PLUGIN" -n demo inspect billing-api | sed -n '/^Conditions:/,$p'
report_dead || fail "a component died during the demo"

cat <<MSG

Demo is running. Try:
  export KUBECONFIG=$KUBECONFIG
  kubectl -n demo describe akp billing-api
  $PLUGIN -n demo status            # or \`kubectl keypair\` after make install-plugin
  kubectl -n demo delete akp billing-api    # deletes the remote key too
Stop everything with: make demo-down
MSG
