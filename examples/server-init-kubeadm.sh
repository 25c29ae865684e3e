#!/bin/bash
# Joins a new Kamatera server to a kubeadm cluster. Base64-encode it (base64 -w0) into the node
# group's script-base64: one copy of this script per node group.
#
# The one place to change per node group is NODE_LABELS / NODE_TAINTS below: paste the
# "join script" line that `kamatera-ca-provider check --cloud-config cloud.ini` prints for the
# group. The node then registers with the labels and taints its template promises (the provider
# adds instance type and region itself when it has Kubernetes access; taints only the kubelet
# can register safely, before pods land).
#
# KAMATERA_JOIN_DRY_RUN=1 bash server-init-kubeadm.sh prints the JoinConfiguration it would use
# and changes nothing.
set -euo pipefail

# --- per node group: the "join script" line of `check` ------------------------------------------
NODE_LABELS="kamatera.com/node-group=workers"
NODE_TAINTS=""
# --- per cluster ----------------------------------------------------------------------------------
API_SERVER="REPLACE_ME:6443"                 # control-plane endpoint
JOIN_TOKEN="REPLACE_ME"                      # kubeadm token create --ttl 0 (or a long-lived one)
CA_CERT_HASH="sha256:REPLACE_ME"             # from kubeadm token create --print-join-command
PROVIDER_ID_PREFIX="kamatera://"             # provider-id-prefix of the cloud config
KUBERNETES_MINOR="v1.33"
# -------------------------------------------------------------------------------------------------

# The server's hostname is its Kamatera server name; the providerID <prefix><name> is how the
# provider ties the node to its server.
NODE_NAME="${NODE_NAME:-$(hostname)}"
PROVIDER_ID="${PROVIDER_ID_PREFIX}${NODE_NAME}"

JOIN_CONFIG="$(cat <<JOIN
apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: "${API_SERVER}"
    token: "${JOIN_TOKEN}"
    caCertHashes: ["${CA_CERT_HASH}"]
nodeRegistration:
  name: "${NODE_NAME}"
  kubeletExtraArgs:
    - name: provider-id
      value: "${PROVIDER_ID}"
    - name: node-labels
      value: "${NODE_LABELS}"
    - name: register-with-taints
      value: "${NODE_TAINTS}"
JOIN
)"
if [ "${KAMATERA_JOIN_DRY_RUN:-}" = "1" ]; then
  printf '%s\n' "${JOIN_CONFIG}"
  exit 0
fi

swapoff -a
modprobe overlay && modprobe br_netfilter
cat >/etc/sysctl.d/99-kubernetes.conf <<SYSCTL
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
SYSCTL
sysctl --system

apt-get update
apt-get install -y containerd apt-transport-https ca-certificates curl gpg
mkdir -p /etc/containerd
containerd config default | sed 's/SystemdCgroup = false/SystemdCgroup = true/' >/etc/containerd/config.toml
systemctl restart containerd

mkdir -p /etc/apt/keyrings
curl -fsSL "https://pkgs.k8s.io/core:/stable:/${KUBERNETES_MINOR}/deb/Release.key" | gpg --dearmor -o /etc/apt/keyrings/kubernetes.gpg
echo "deb [signed-by=/etc/apt/keyrings/kubernetes.gpg] https://pkgs.k8s.io/core:/stable:/${KUBERNETES_MINOR}/deb/ /" >/etc/apt/sources.list.d/kubernetes.list
apt-get update
apt-get install -y kubelet kubeadm
apt-mark hold kubelet kubeadm

printf '%s\n' "${JOIN_CONFIG}" >/tmp/join.yaml
kubeadm join --config /tmp/join.yaml
