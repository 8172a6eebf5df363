#!/usr/bin/env bash
# Debian packages the GUI tests need: a virtual X server and the libraries of Qt 6's xcb platform
# (PyQt6, the binding of the napari extra; libxcb-cursor0 is the one Qt 6 adds over Qt 5).
# (napari's OpenGL canvas does not work with QT_QPA_PLATFORM=offscreen.) Run as root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
    xvfb xauth libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
    libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxcb-sync1 libxcb-xkb1 libx11-xcb1 \
    libxkbcommon-x11-0 libdbus-1-3 \
    libegl1 libgl1 libfontconfig1 libglib2.0-0
