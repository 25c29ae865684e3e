#!/usr/bin/env bash
# Proves the alert rules: `promtool check rules` on the rule groups of
# deploy/prometheus-rules.yaml (a PrometheusRule: its `spec` holds them), then
# `promtool test rules` with the unit tests in deploy/alerts-test.yaml (every alert fires on the
# series that should fire it, after its `for`, and stays silent on healthy ones).
# Needs promtool (Debian's `prometheus` package; .ci/run installs it). Fails without it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null 2>&1; then
  echo "check-alerts: promtool not found (apt-get install prometheus)" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The rule groups: everything under `spec:`, one indentation level less.
sed -n '/^spec:/,$p' deploy/prometheus-rules.yaml | sed '1d; s/^  //' >"$work/rules.yaml"
cp deploy/alerts-test.yaml "$work/alerts-test.yaml"
promtool check rules "$work/rules.yaml"
(cd "$work" && promtool test rules alerts-test.yaml)
# Every alert has a test.
missing=0
for alert in $(sed -n 's/^ *- alert: *//p' deploy/prometheus-rules.yaml); do
  if ! grep -q "alertname: $alert\$" deploy/alerts-test.yaml; then
    echo "check-alerts: no unit test for $alert" >&2
    missing=1
  fi
done
[ "$missing" = 0 ]
echo "check-alerts: every alert in deploy/prometheus-rules.yaml checked and tested"
