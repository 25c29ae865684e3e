#!/usr/bin/env bash
# Renders each kustomize overlay and checks it holds the same objects as the matching
# examples/*.yaml file (which stay readable, commented, `kubectl apply -f`-able copies).
# Needs kubectl (for `kubectl kustomize`) and python3 with PyYAML; skips when either is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v kubectl >/dev/null 2>&1 || ! python3 -c 'import yaml' 2>/dev/null; then
  echo "check-overlays: skipped (needs kubectl and python3-yaml)"
  exit 0
fi
status=0
for pair in primary:deployment.yaml fallback:deployment-fallback.yaml mtls:deployment-mtls.yaml; do
  overlay=${pair%%:*}
  example=${pair#*:}
  rendered=$(mktemp)
  kubectl kustomize "deploy/overlays/$overlay" >"$rendered"
  if python3 - "$rendered" "examples/$example" <<'PY'
import sys, yaml
def objects(path):
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(open(path)) if d}
a, b = objects(sys.argv[1]), objects(sys.argv[2])
bad = sorted(set(a) ^ set(b)) + sorted(k for k in set(a) & set(b) if a[k] != b[k])
for k in bad:
    print(f"  differs: {k[0]} {k[1]}")
sys.exit(1 if bad else 0)
PY
  then
    echo "check-overlays: deploy/overlays/$overlay = examples/$example"
  else
    echo "check-overlays: deploy/overlays/$overlay differs from examples/$example"
    status=1
  fi
  rm -f "$rendered"
done
exit $status
