#!/usr/bin/env bash
# `deploy/need.sh COMMAND PACKAGE`: installs Debian package PACKAGE unless COMMAND exists.
# Fails (never skips) when it cannot: the targets that call it need the tool.
set -euo pipefail
command=$1 package=$2
command -v "$command" > /dev/null && exit 0
sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo -n)
echo "installing $package from Debian's packages"
"${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q \
  && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
    install -y -q --no-install-recommends "$package" \
  || { echo "cannot install $package with apt-get" >&2; exit 1; }
command -v "$command" > /dev/null || { echo "$package is installed but $command is not on PATH" >&2; exit 1; }
