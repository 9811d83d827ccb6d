#!/usr/bin/env bash
# Installs the system packages poolctl's tests drive for real (Debian packages): HAProxy and Prometheus,
# and wrk for bench/proxy.py.
# Idempotent and quiet when everything is present; needs root (or sudo) only when something is missing.
set -euo pipefail
need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v wrk >/dev/null 2>&1 || need+=(wrk)  # load generator of bench/proxy.py
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing system packages: ${need[*]}"
$SUDO apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# the Debian packages start services we do not use: tests run their own instances on loopback ports
for svc in haproxy prometheus; do
  $SUDO service "$svc" stop >/dev/null 2>&1 || true
  pkill -x "$svc" >/dev/null 2>&1 || true
done
