#!/usr/bin/env bash
# What this host must have before `make` installs anything (vLLM's CPU engine fails a minute into start-up
# without it). One line per missing piece, saying what to install; exit 1 when anything is missing. As root on
# Debian/Ubuntu it installs libnuma1 itself.
#   deploy/check-host.sh [PYTHON]   (default python3)
set -uo pipefail
py=${1:-python3}
problems=0
say() { echo "host check: $*" >&2; problems=1; }

if ! command -v "$py" >/dev/null 2>&1; then
  say "no $py: install Python 3.11-3.14 (Debian/Ubuntu: apt-get install python3.11 python3.11-venv; Fedora: dnf install python3.11) and run make PY=python3.11"
elif ! "$py" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 15)))' 2>/dev/null; then
  say "$py is $("$py" -V 2>&1 | head -1); vLLM 0.32 needs 3.11-3.14: install one (Debian/Ubuntu: apt-get install python3.11 python3.11-venv; Fedora: dnf install python3.11) and run make PY=python3.11"
elif ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
  v=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  say "$py cannot make virtual environments: install venv (Debian/Ubuntu: apt-get install python$v-venv; Fedora: part of python$v)"
fi

has_libnuma() {
  { ldconfig -p 2>/dev/null | grep -q 'libnuma\.so\.1'; } \
    || ls /usr/lib*/libnuma.so.1 /usr/lib/*-linux-gnu/libnuma.so.1 /lib/*-linux-gnu/libnuma.so.1 >/dev/null 2>&1
}
# libnuma: installed here when root on a Debian/Ubuntu host (a fresh container or CI machine), else named.
if [ "$(uname -s)" = Linux ] && ! has_libnuma; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "host check: installing libnuma1 (vLLM's CPU engine links it) with apt-get" >&2
    apt-get -o DPkg::Lock::Timeout=600 update -q >&2 \
      && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
        libnuma1 >&2
  fi
  has_libnuma || say "libnuma is missing (vLLM's CPU engine links it): Debian/Ubuntu: apt-get install libnuma1; Fedora: dnf install numactl-libs"
fi
exit $problems
