#!/bin/bash
# Joins a new Kamatera server to a kubeadm cluster. Base64-encode it (base64 -w0) into the node
# group's script-base64. One script per node group: the labels and taints below must match the
# group's template-label / template-taint keys, or the autoscaler's plans will not fit reality.
set -euo pipefail

# --- fill in -----------------------------------------------------------------------------------
API_SERVER="REPLACE_ME:6443"                 # control-plane endpoint
JOIN_TOKEN="REPLACE_ME"                      # kubeadm token create --ttl 0 (or a long-lived one)
CA_CERT_HASH="sha256:REPLACE_ME"             # from kubeadm token create --print-join-command
NODE_GROUP="workers"                         # the [nodegroup "..."] name
NODE_LABELS="kamatera.com/node-group=${NODE_GROUP},node.kamatera.com/pool=workers"
NODE_TAINTS=""                               # e.g. dedicated=batch:NoSchedule
KUBERNETES_MINOR="v1.33"
# -----------------------------------------------------------------------------------------------

# The server's name is the Kamatera server name; the providerID must be kamatera://<name>
# (the provider's provider-id-prefix) so the autoscaler can match node and server.
NODE_NAME="$(hostname)"
PROVIDER_ID="kamatera://${NODE_NAME}"

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

cat >/tmp/join.yaml <<JOIN
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
kubeadm join --config /tmp/join.yaml
