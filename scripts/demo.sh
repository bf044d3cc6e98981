#!/usr/bin/env bash
# The demo (`make demo`): a local control plane, a ThreatWinds sandbox, the operator, and
# the sample in examples/threatwinds.yaml, verified with the code from the sandbox's
# outbox. Everything keeps running afterwards; `make demo-down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=.cluster/demo
log() { printf '\n==> %s\n' "$*"; }

log "control plane"
scripts/control-plane.sh install
KUBECONFIG=$(scripts/control-plane.sh up)
export KUBECONFIG
mkdir -p "$DEMO"

log "building the operator"
cargo build --quiet
BIN=target/debug/keypair-operator

stop_pid() { [ -f "$1" ] && kill "$(cat "$1")" 2>/dev/null || true; rm -f "$1"; }
stop_pid "$DEMO/operator.pid"
stop_pid "$DEMO/sandbox.pid"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TOKEN=demo-session-$(openssl rand -hex 16)
log "ThreatWinds sandbox on 127.0.0.1:$PORT"
"$BIN" sandbox --provider threatwinds --listen "127.0.0.1:$PORT" --session-token "$TOKEN" \
  --state-file "$DEMO/sandbox-state.json" >"$DEMO/sandbox.log" 2>&1 &
echo $! >"$DEMO/sandbox.pid"
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/_sandbox/keys" >/dev/null && break; sleep 0.1; done

log "CRDs"
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null

log "operator (log: $DEMO/operator.log)"
"$BIN" run --verification-poll-interval 2s >"$DEMO/operator.log" 2>&1 &
echo $! >"$DEMO/operator.pid"

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
    sleep 0.5
  done
  echo "billing-api has no $1; see $DEMO/operator.log" >&2
  return 1
}

# The code the sandbox "emailed" for verification code id $1.
code_for() {
  curl -sf "http://127.0.0.1:$PORT/_sandbox/outbox" \
    | python3 -c "import json,sys; print(next(m['code'] for m in json.load(sys.stdin) if m['verificationCodeID']=='$1'))"
}

log "waiting for the key pair and its verification code"
CODE_ID=$(wait_field '{.status.verificationCodeID}')
kubectl -n demo get akp billing-api
CODE=$(code_for "$CODE_ID")
log "submitting the emailed code from the sandbox outbox"
kubectl -n demo create secret generic billing-api-code --from-literal=code="$CODE" --dry-run=client -o yaml | kubectl -n demo apply -f -
kubectl -n demo wait --for=condition=Ready akp/billing-api --timeout=120s >/dev/null

log "kubectl get akp"
kubectl -n demo get akp
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
kubectl -n demo create secret generic billing-api-code --from-literal=code="$NEW_CODE" --dry-run=client -o yaml | kubectl -n demo apply -f - >/dev/null
wait_field '{.status.previousKey.keyID}' >/dev/null
printf 'apiKey = %s (previous key %s until %s)\n' \
  "$(kubectl -n demo get secret billing-api -o jsonpath='{.data.apiKey}' | base64 -d)" \
  "$(kubectl -n demo get akp billing-api -o jsonpath='{.status.previousKey.keyID}')" \
  "$(kubectl -n demo get akp billing-api -o jsonpath='{.status.previousKey.deleteAfter}')"
kubectl -n demo get events --field-selector involvedObject.name=billing-api -o custom-columns=REASON:.reason,MESSAGE:.message 2>/dev/null | tail -n 6 || true

cat <<MSG

Demo is running. Try:
  export KUBECONFIG=$KUBECONFIG
  kubectl -n demo describe akp billing-api
  kubectl -n demo delete akp billing-api    # deletes the remote key too
Stop everything with: make demo-down
MSG
