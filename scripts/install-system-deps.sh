#!/usr/bin/env bash
# Installs the system packages poolctl's tests drive for real (Debian packages): HAProxy and Prometheus,
# and wrk for bench/proxy.py.
# Idempotent and quiet when everything is present; needs root (or sudo) only when something is missing.
# It never ends a process it did not start: the tests run their own HAProxy and Prometheus on loopback
# ports (and stop them through their own pids); an HAProxy or Prometheus already running on this machine
# is left alone.
set -euo pipefail
need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v wrk >/dev/null 2>&1 || need+=(wrk)  # load generator of bench/proxy.py
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

# A service that already runs before this install is never touched afterwards.
service_running() { $SUDO service "$1" status >/dev/null 2>&1; }
ran_before=()
for svc in "${need[@]}"; do
  service_running "$svc" && ran_before+=("$svc")
done

echo "installing system packages: ${need[*]}"
$SUDO apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null

# Installing a Debian package starts its service. Stop only the services this install started, through
# their own init scripts (which stop the pid in the service's pid file), nothing else.
for svc in "${need[@]}"; do
  case " ${ran_before[*]-} " in *" $svc "*) continue ;; esac
  if service_running "$svc"; then
    echo "stopping the $svc service the package started (the tests run their own instance)"
    $SUDO service "$svc" stop >/dev/null 2>&1 || echo "warning: could not stop the $svc service"
  fi
done
