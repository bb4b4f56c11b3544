#!/usr/bin/env bash
# Installs the Debian packages the tests need, when they are missing (as root, via apt-get).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
need=()
while read -r cmd pkg; do
  [[ -z "$cmd" || "$cmd" == \#* ]] && continue
  if [[ "$cmd" == dpkg:* ]]; then  # a library without a command: ask dpkg
    dpkg -s "${cmd#dpkg:}" >/dev/null 2>&1 || need+=("$pkg")
  else
    command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
  fi
done < "$here/debian-packages.txt"
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages (run as root to install): ${need[*]}" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}"
