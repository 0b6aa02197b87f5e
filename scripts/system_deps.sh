#!/usr/bin/env bash
# Installs the system programs saviorrec needs where they are missing: a Java 17 runtime (Spark)
# and redis-server (online store, tests). Debian/Ubuntu; needs root (or sudo) only when something
# is missing.
set -euo pipefail
missing=()
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -eq 0 ]; then
  echo "system deps: java and redis-server present"
  exit 0
fi
echo "system deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}"
