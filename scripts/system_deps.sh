#!/usr/bin/env bash
# Installs the system programs saviorrec needs where they are missing: a Java 17 runtime (Spark),
# redis-server (online store, tests) and Debian's chromium with its chromedriver (the service
# page's browser test, tests/test_service_page.py). Debian/Ubuntu; needs root (or sudo) only when
# something is missing.
set -euo pipefail
missing=()
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -eq 0 ]; then
  echo "system deps: java, redis-server, chromium and chromedriver present"
  exit 0
fi
echo "system deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}"
