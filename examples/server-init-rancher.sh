#!/bin/bash
# Registers a new Kamatera server as a worker of a Rancher-managed custom cluster. Base64-encode
# it (base64 -w0) into the node group's script-base64: one copy of this script per node group.
#
# The one place to change per node group is NODE_LABELS / NODE_TAINTS below: paste the
# "join script" line that `kamatera-ca-provider check --cloud-config cloud.ini` prints for the
# group. The node then registers with the labels and taints its template promises (the provider
# adds instance type and region itself when it has Kubernetes access; taints only the kubelet
# can register safely, before pods land).
#
# Rancher custom clusters run RKE2 (or K3s) underneath, which set providerID
# <distribution>://<node name>: set provider-id-prefix to match (rke2:// or k3s://) in the cloud
# config.
#
# KAMATERA_JOIN_DRY_RUN=1 bash server-init-rancher.sh prints the agent's arguments and changes
# nothing.
set -euo pipefail

# --- per node group: the "join script" line of `check` ------------------------------------------
NODE_LABELS="kamatera.com/node-group=workers"
NODE_TAINTS=""
# --- per cluster ----------------------------------------------------------------------------------
RANCHER_URL="https://REPLACE_ME"             # the Rancher server
REGISTRATION_TOKEN="REPLACE_ME"              # cluster registration token (Cluster > Registration)
CA_CHECKSUM=""                               # only for a private CA: --ca-checksum value
# -------------------------------------------------------------------------------------------------

NODE_NAME="${NODE_NAME:-$(hostname)}"
IFS=',' read -r -a labels <<<"${NODE_LABELS}"
IFS=',' read -r -a taints <<<"${NODE_TAINTS}"
args=(--worker --node-name "${NODE_NAME}")
for l in "${labels[@]}"; do args+=(--label "${l}"); done
for t in "${taints[@]}"; do args+=(--taints "${t}"); done
if [ -n "${CA_CHECKSUM}" ]; then args+=(--ca-checksum "${CA_CHECKSUM}"); fi
if [ "${KAMATERA_JOIN_DRY_RUN:-}" = "1" ]; then
  printf '%s\n' "${args[@]}"
  exit 0
fi

curl -fsSL "${RANCHER_URL}/system-agent-install.sh" | sh -s - \
  --server "${RANCHER_URL}" --token "${REGISTRATION_TOKEN}" "${args[@]}"
