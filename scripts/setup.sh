#!/usr/bin/env bash
# One-time set-up on Debian/Ubuntu: system packages (as root), then a venv with cbnet-tl[build,dev].
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# qemu-user-static, binfmt-support, debootstrap: the arm64 check (scripts/arm64_check.py) runs bundles on
# Debian arm64 roots under qemu-user emulation.
APT_PACKAGES=(dataset-fashion-mnist openssh-server openssh-client rsync ansible-core chromium python3-venv
              qemu-user-static binfmt-support debootstrap systemd)
missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[build,dev]"
