#!/usr/bin/env bash
# The demo command: set everything up, mount the sample ext4 image, show it, unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
image=images/sample-ext4.img
mnt=$(mktemp -d /tmp/pyfsmount-demo.XXXXXX)
cleanup() { fusermount3 -u "$mnt" 2>/dev/null || true; rmdir "$mnt" 2>/dev/null || true; }
trap cleanup EXIT
.venv/bin/pyfsmount "$image" "$mnt"
echo "== mounted $image at $mnt"
grep " $mnt " /proc/mounts
echo "== tree"
(cd "$mnt" && ls -lAR --time-style=long-iso .)
echo "== $mnt/README.txt"
cat "$mnt/README.txt"
fusermount3 -u "$mnt"
echo "== unmounted"
