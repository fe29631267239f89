#!/usr/bin/env bash
# Set up scorestream on a fresh Debian machine: system packages + Python venv.
# Idempotent: re-running only installs what is missing.
#   SCORESTREAM_EXTRAS   pip extras to install (default "train,dev")
#   PYTHON               interpreter for the venv (default python3.11, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  fluidsynth                     # synthesis of training/test audio
  fluid-soundfont-gm             # FluidR3_GM (train timbre)
  fluidr3mono-gm-soundfont       # FluidR3Mono_GM (train timbre)
  timgm6mb-soundfont             # TimGM6mb (train timbre)
  musescore-general-soundfont    # MuseScore_General (held-out test timbre)
  mosquitto                      # MQTT broker for monitoring consumers and tests
  chromium                       # headless browser for tests/test_browser.py (driven by playwright, no download)
  firefox-esr                    # the second browser (tests/test_browser_firefox.py, WebDriver BiDi, no download)
  pulseaudio                     # a null sound card for Firefox's Web Audio in those tests (started by the test)
  espeak-ng                      # speech for the demo and the "not music" tests
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# the Debian mosquitto package starts a system broker; tests start their own on free ports
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PY"
  if ! "$PY" -m venv .venv 2>/dev/null; then
    # Debian's own python3 needs the venv module from a separate package
    rm -rf .venv
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "python${ver}-venv" >/dev/null || \
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    "$PY" -m venv .venv
  fi
fi
EXTRAS="${SCORESTREAM_EXTRAS:-train,dev}"
stamp=".venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages (extras: $EXTRAS)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch is pinned (CPU wheel); never let a dependency pull a CUDA build
  .venv/bin/python -m pip install -q -e ".[${EXTRAS}]"
  touch "$stamp"
fi
echo "setup: ready (.venv/bin/scorestream)"
