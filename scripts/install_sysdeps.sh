#!/usr/bin/env bash
# Install the X virtual framebuffer and the libxcb set napari's Qt canvas needs, when missing
# and when we can (root with apt). Without them, canvas tests run headless where possible.
set -uo pipefail
PKGS="xvfb xauth libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0
 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
 libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1"
missing=""
for p in $PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "note: cannot install$missing (no apt-get); GUI tests need them" >&2; exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "note: not root; install these for GUI tests:$missing" >&2; exit 0
  fi
fi
echo "installing system packages:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null
} || echo "note: could not install$missing" >&2
exit 0
