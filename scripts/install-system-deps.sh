#!/usr/bin/env bash
# Debian packages the GUI tests need: a virtual X server and the libraries of Qt's xcb platform.
# (napari's OpenGL canvas does not work with QT_QPA_PLATFORM=offscreen.) Run as root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
    xvfb xauth libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
    libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxkbcommon-x11-0 libdbus-1-3 \
    libegl1 libgl1 libfontconfig1 libglib2.0-0
