#!/bin/sh
# Prepare a machine for the tc-netem guest checks (docs/netem-kvm.md): qemu + static busybox from
# apt, then Debian's stock kernel unpacked under .edgebed/kvm (the host's /boot is not touched).
# Run as root from anywhere; prints how long each step took.
set -eu
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
t0=$(date +%s)
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    -o DPkg::Lock::Timeout=600 qemu-system-x86 busybox-static
t1=$(date +%s)
echo "kvm setup: apt-get install qemu-system-x86 busybox-static took $((t1 - t0)) s"
if "$PY" -m netem.kvmguest check >/dev/null 2>&1; then
    echo "kvm setup: kernel already present"
else
    "$PY" -m netem.kvmguest fetch-kernel
fi
t2=$(date +%s)
echo "kvm setup: kernel fetch took $((t2 - t1)) s"
"$PY" -m netem.kvmguest check
