#!/bin/bash
# Registers a new Kamatera server as a worker of a Rancher-managed custom cluster. Base64-encode it
# (base64 -w0) into the node group's script-base64. Rancher custom clusters run RKE2 (or K3s)
# underneath, which set providerID <distribution>://<node name>: set provider-id-prefix to match
# (rke2:// or k3s://) in the cloud config.
set -euo pipefail

# --- fill in -----------------------------------------------------------------------------------
RANCHER_URL="https://REPLACE_ME"             # the Rancher server
REGISTRATION_TOKEN="REPLACE_ME"              # cluster registration token (Cluster > Registration)
CA_CHECKSUM=""                               # only for a private CA: --ca-checksum value
NODE_GROUP="workers"
NODE_LABELS=("kamatera.com/node-group=${NODE_GROUP}" "node.kamatera.com/pool=workers")
NODE_TAINTS=()                               # e.g. ("dedicated=batch:NoSchedule")
# -----------------------------------------------------------------------------------------------

args=(--worker --node-name "$(hostname)")
for l in "${NODE_LABELS[@]}"; do args+=(--label "${l}"); done
for t in "${NODE_TAINTS[@]}"; do args+=(--taints "${t}"); done
if [ -n "${CA_CHECKSUM}" ]; then args+=(--ca-checksum "${CA_CHECKSUM}"); fi

curl -fsSL "${RANCHER_URL}/system-agent-install.sh" | sh -s - \
  --server "${RANCHER_URL}" --token "${REGISTRATION_TOKEN}" "${args[@]}"
