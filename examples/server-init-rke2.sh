#!/bin/bash
# Joins a new Kamatera server to an RKE2 cluster as an agent. Base64-encode it (base64 -w0) into
# the node group's script-base64: one copy of this script per node group.
#
# The one place to change per node group is NODE_LABELS / NODE_TAINTS below: paste the
# "join script" line that `kamatera-ca-provider check --cloud-config cloud.ini` prints for the
# group. The node then registers with the labels and taints its template promises (the provider
# adds instance type and region itself when it has Kubernetes access; taints only the kubelet
# can register safely, before pods land).
#
# RKE2 sets providerID rke2://<node name> itself: either set provider-id-prefix = rke2:// in the
# cloud config's [global], or keep kamatera:// here and the kubelet registers that instead.
#
# KAMATERA_JOIN_DRY_RUN=1 bash server-init-rke2.sh prints the RKE2 config it would write and
# changes nothing.
set -euo pipefail

# --- per node group: the "join script" line of `check` ------------------------------------------
NODE_LABELS="kamatera.com/node-group=workers"
NODE_TAINTS=""
# --- per cluster ----------------------------------------------------------------------------------
RKE2_SERVER="https://REPLACE_ME:9345"        # an RKE2 server's supervisor address
RKE2_TOKEN="REPLACE_ME"                      # /var/lib/rancher/rke2/server/node-token
PROVIDER_ID_PREFIX="rke2://"                 # provider-id-prefix of the cloud config
# -------------------------------------------------------------------------------------------------

NODE_NAME="${NODE_NAME:-$(hostname)}"
IFS=',' read -r -a labels <<<"${NODE_LABELS}"
IFS=',' read -r -a taints <<<"${NODE_TAINTS}"
RKE2_CONFIG="$(
  echo "server: ${RKE2_SERVER}"
  echo "token: ${RKE2_TOKEN}"
  echo "node-name: ${NODE_NAME}"
  if [ "${#labels[@]}" -gt 0 ]; then
    echo "node-label:"
    for l in "${labels[@]}"; do echo "  - \"${l}\""; done
  fi
  if [ "${#taints[@]}" -gt 0 ]; then
    echo "node-taint:"
    for t in "${taints[@]}"; do echo "  - \"${t}\""; done
  fi
  if [ "${PROVIDER_ID_PREFIX}" != "rke2://" ]; then
    echo "kubelet-arg:"
    echo "  - \"provider-id=${PROVIDER_ID_PREFIX}${NODE_NAME}\""
  fi
)"
if [ "${KAMATERA_JOIN_DRY_RUN:-}" = "1" ]; then
  printf '%s\n' "${RKE2_CONFIG}"
  exit 0
fi

mkdir -p /etc/rancher/rke2
printf '%s\n' "${RKE2_CONFIG}" >/etc/rancher/rke2/config.yaml
curl -sfL https://get.rke2.io | INSTALL_RKE2_TYPE="agent" sh -
systemctl enable --now rke2-agent.service
