#!/usr/bin/env bash
# Installs what svctrace's build, tests and demo need on a fresh Debian 12
# machine (as root, or with sudo). Idempotent.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
pkgs=(
  clang llvm           # regenerate the BPF object (drift check)
  iproute2 iptables nftables conntrack  # the lab: namespaces, kube-proxy-style rules
  ipvsadm ipset        # IPVS scenarios (in VM kernels that have ip_vs; kube-proxy's IPVS mode)
  qemu-system-x86 busybox-static kmod zstd xz-utils  # the VM kernel matrix
  tshark               # reads the pcapng files svctrace writes
  iperf3               # benchmarks
  bpftool              # leak checks in reliability tests
  curl ca-certificates git make
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture: answer no, non-interactively.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! command -v go >/dev/null 2>&1 && [ ! -x /usr/local/go/bin/go ]; then
  echo "install-deps: Go is missing: install Go 1.26+ (https://go.dev/doc/install) to /usr/local/go" >&2
  exit 1
fi
