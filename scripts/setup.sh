#!/usr/bin/env bash
# One-time set-up on Debian/Ubuntu: system packages (as root, or with sudo), then the venv .venv.
#
#   ./scripts/setup.sh           what `cbnet-tl build` needs: Fashion-MNIST and cbnet-tl[build]
#   ./scripts/setup.sh --tests   that, plus what the test suite needs: the tools below and cbnet-tl[build,dev]
#
# Idempotent: re-running it only installs what is missing. pip's output is kept in .venv/setup-pip.log and
# printed only when pip fails.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    "") tests=0 ;;
    --tests) tests=1 ;;
    *) echo "usage: $0 [--tests]" >&2; exit 2 ;;
esac

# dataset-fashion-mnist: the default build's data (/usr/share/datasets/fashion-mnist); python3-venv: the venv.
APT_PACKAGES=(dataset-fashion-mnist python3-venv)
EXTRAS="build"
if ((tests)); then
    # openssh-server, openssh-client, rsync: deploy tests against a local sshd; ansible-core: the fleet
    # playbook's syntax check; systemd: systemd-analyze scores the bundle's units; chromium: the serve page, loaded headless in its test;
    # tuxpaint-stamps-default: RGB drawings for the image tests; qemu-user-static, binfmt-support, debootstrap:
    # the arm64 check (scripts/arm64_check.py) runs bundles on Debian arm64 roots under qemu-user emulation;
    # qemu-user: the dynamic qemu-aarch64, which loads the instruction-counting plugin (bench --arm64);
    # gcc, libc6-dev: build that plugin from source (toolchain/data/insncount.c).
    APT_PACKAGES+=(openssh-server openssh-client rsync ansible-core systemd chromium tuxpaint-stamps-default
                   qemu-user qemu-user-static binfmt-support debootstrap gcc libc6-dev)
    EXTRAS="build,dev"
fi

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
pip_log=.venv/setup-pip.log
if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e ".[$EXTRAS]"; } \
        >"$pip_log" 2>&1; then
    cat "$pip_log" >&2
    echo "setup: pip install -e \".[$EXTRAS]\" failed (its output is above and in $pip_log)" >&2
    exit 1
fi
