#!/usr/bin/env bash
# Make Debian's dataset-fashion-mnist files available for the demo, when the machine allows.
# Without them main.py still tries a download through torchvision, or says where files go.
set -u
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "=> Installing Debian's dataset-fashion-mnist"
  apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || echo "warning: apt-get could not install dataset-fashion-mnist"
else
  echo "note: $DIR is missing; as root, run: apt-get install dataset-fashion-mnist"
fi
exit 0
