# Shared by scripts/quickstart and scripts/test: find or install what a fresh Debian machine lacks.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  echo ">> installing $* with apt-get" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

mosquitto_bin() {
  command -v mosquitto 2>/dev/null || { [ -x /usr/sbin/mosquitto ] && echo /usr/sbin/mosquitto; } || true
}

ensure_mosquitto() {
  if [ -z "$(mosquitto_bin)" ]; then apt_install mosquitto mosquitto-clients; fi
}

pick_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  echo "error: Python 3.11 or newer is needed (python3 --version says: $(python3 --version 2>&1))" >&2
  exit 1
}

ensure_venv() {
  local extras="$1" python
  python="$(pick_python)"
  if [ ! -x "$VENV/bin/python" ]; then
    # Debian ships venv separately (python3-venv); install it when missing.
    if ! "$python" -m venv "$VENV" >/dev/null 2>&1; then
      rm -rf "$VENV"
      apt_install python3-venv
      "$python" -m venv "$VENV"
    fi
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # Build back-ends chatter even with -q; keep their output for when something goes wrong.
  if ! "$VENV/bin/python" -m pip install -q -e "$ROOT$extras" >"$VENV/pip-install.log" 2>&1; then
    cat "$VENV/pip-install.log" >&2
    echo "error: installing the project into $VENV failed (output above)" >&2
    exit 1
  fi
}
