#!/usr/bin/env bash
# Smoke test of a running tools/k8s cluster (cluster.sh up first).
# Uses its own namespace and deletes it at the end.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
eval "$("$HERE/cluster.sh" env)"
fail() { echo "SMOKE FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

[[ "$(kubectl config current-context)" == loraplex-test ]] || fail "context is not loraplex-test"
kubectl version | grep -q 'Server Version: v1.36.3' || fail "server version"
ok "server v1.36.3, context loraplex-test"

NS="smoke-$$"
kubectl create namespace "$NS" >/dev/null
trap 'kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true' EXIT
ok "namespace $NS created"

kubectl -n "$NS" apply -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: gpu-app}
spec:
  replicas: 1
  selector: {matchLabels: {app: gpu-app}}
  template:
    metadata: {labels: {app: gpu-app}}
    spec:
      nodeSelector: {loraplex.io/gpu: "true"}
      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
      containers:
      - name: c
        image: example.invalid/worker:1
        resources: {limits: {nvidia.com/gpu: 1}}
---
apiVersion: v1
kind: Pod
metadata: {name: greedy}
spec:
  nodeSelector: {loraplex.io/gpu: "true"}
  tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
  containers:
  - name: c
    image: example.invalid/worker:1
    resources: {limits: {nvidia.com/gpu: 1000}}
EOF
kubectl -n "$NS" rollout status deploy/gpu-app --timeout=60s >/dev/null || fail "deployment not ready"
node=$(kubectl -n "$NS" get pods -l app=gpu-app -o jsonpath='{.items[0].spec.nodeName}')
phase=$(kubectl -n "$NS" get pods -l app=gpu-app -o jsonpath='{.items[0].status.phase}')
[[ "$node" == gpu-node-* && "$phase" == Running ]] || fail "pod on '$node' phase '$phase'"
ok "deployment pod Running/Ready on $node"

for _ in $(seq 1 40); do
  kubectl -n "$NS" get events --field-selector involvedObject.name=greedy,reason=FailedScheduling \
    -o name | grep -q . && break
  sleep 0.5
done
[[ "$(kubectl -n "$NS" get pod greedy -o jsonpath='{.status.phase}')" == Pending ]] || fail "greedy not Pending"
kubectl -n "$NS" get events --field-selector involvedObject.name=greedy,reason=FailedScheduling -o name | grep -q . \
  || fail "no FailedScheduling event for greedy"
ok "over-asking pod Pending with FailedScheduling"

kubectl -n "$NS" create token default >/dev/null || fail "create token"
kubectl -n "$NS" create serviceaccount op >/dev/null
kubectl -n "$NS" create role r --verb=get,list --resource=pods >/dev/null
kubectl -n "$NS" create rolebinding rb --role=r --serviceaccount="$NS:op" >/dev/null
[[ "$(kubectl auth can-i list pods -n "$NS" --as="system:serviceaccount:$NS:op")" == yes ]] || fail "can-i list"
[[ "$(kubectl auth can-i create pods -n "$NS" --as="system:serviceaccount:$NS:op" || true)" == no ]] || fail "can-i create"
ok "token creation, RBAC and impersonation"

helm version --template '{{.Version}}' | grep -q v3.22.0 || fail "helm version"
helm list -n "$NS" >/dev/null || fail "helm list"
ok "helm $(helm version --template '{{.Version}}') talks to the cluster"
echo "SMOKE OK"
