#!/usr/bin/env bash
# Installs what the project needs; safe to run again (it only does what is missing).
#   scripts/setup.sh            Python virtual environment + the package
#   scripts/setup.sh --test     also test tools and Debian packages (Orthanc, DICOMweb plugin, dcmtk, npm, HAProxy)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ "$want_test" = 1 ]; then
  missing=()
  command -v Orthanc >/dev/null 2>&1 || missing+=(orthanc)
  [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
  command -v findscu >/dev/null 2>&1 || missing+=(dcmtk)
  command -v npm >/dev/null 2>&1 || missing+=(npm)  # fetches the official R4 definitions
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)  # the load balancer in front of several API nodes
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    # policy-rc.d keeps the packages from starting a system Orthanc; tests start their own
    as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    as_root rm -f /usr/sbin/policy-rc.d
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
extras=""
[ "$want_test" = 1 ] && extras="[test]"
stamp=".venv/.installed${extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".${extras}"
  touch "$stamp"
fi
