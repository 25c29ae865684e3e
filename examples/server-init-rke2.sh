#!/bin/bash
# Joins a new Kamatera server to an RKE2 cluster as an agent. Base64-encode it (base64 -w0) into the
# node group's script-base64. RKE2 sets providerID rke2://<node name> itself: set
# provider-id-prefix = rke2:// in [global] (the provider then matches it), or keep kamatera://
# and override it below with kubelet-arg.
set -euo pipefail

# --- fill in -----------------------------------------------------------------------------------
RKE2_SERVER="https://REPLACE_ME:9345"        # an RKE2 server's supervisor address
RKE2_TOKEN="REPLACE_ME"                      # /var/lib/rancher/rke2/server/node-token
NODE_GROUP="workers"
NODE_LABELS=("kamatera.com/node-group=${NODE_GROUP}" "node.kamatera.com/pool=workers")
NODE_TAINTS=()                               # e.g. ("dedicated=batch:NoSchedule")
PROVIDER_ID_PREFIX="rke2://"                 # must equal provider-id-prefix in the cloud config
# -----------------------------------------------------------------------------------------------

NODE_NAME="$(hostname)"
mkdir -p /etc/rancher/rke2
{
  echo "server: ${RKE2_SERVER}"
  echo "token: ${RKE2_TOKEN}"
  echo "node-name: ${NODE_NAME}"
  echo "node-label:"
  for l in "${NODE_LABELS[@]}"; do echo "  - \"${l}\""; done
  if [ "${#NODE_TAINTS[@]}" -gt 0 ]; then
    echo "node-taint:"
    for t in "${NODE_TAINTS[@]}"; do echo "  - \"${t}\""; done
  fi
  if [ "${PROVIDER_ID_PREFIX}" != "rke2://" ]; then
    echo "kubelet-arg:"
    echo "  - \"provider-id=${PROVIDER_ID_PREFIX}${NODE_NAME}\""
  fi
} >/etc/rancher/rke2/config.yaml

curl -sfL https://get.rke2.io | INSTALL_RKE2_TYPE="agent" sh -
systemctl enable --now rke2-agent.service
