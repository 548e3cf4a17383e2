#!/usr/bin/env bash
# Rebuild the sample images in this folder from a small generated tree, reproducibly
# (fixed UUIDs, hash seeds and times), with the public tools. Needs root (owners, devices).
set -euo pipefail
cd "$(dirname "$0")"
src=$(mktemp -d)
chmod 755 "$src"  # mktemp makes it 0700: the root of the images would be unreadable to users
trap 'rm -rf "$src"' EXIT

mkdir -p "$src/docs/notes" "$src/bin" "$src/empty"
cat > "$src/README.txt" <<'TEXT'
This is the pyfsmount sample image.

It was made by images/build.sh with the public tools (mkfs.ext4 -d, mksquashfs),
and is mounted here by a Python driver running in a confined process of its
own: the kernel never parsed it.
TEXT
printf 'first note\n' > "$src/docs/notes/one.txt"
seq 1 20000 > "$src/docs/numbers.txt"
printf '#!/bin/sh\necho hello from the image\n' > "$src/bin/hello"
chmod 755 "$src/bin/hello"
ln "$src/docs/notes/one.txt" "$src/docs/notes/one-hardlink.txt"
ln -s ../README.txt "$src/docs/readme-link"
ln -s "$(printf 'very/long/target/%.0s' $(seq 1 8))end" "$src/docs/slow-symlink"
setfattr -n user.comment -v "an extended attribute" "$src/README.txt"
chown -R 1000:1000 "$src/docs"
find "$src" -exec touch -h -d '2024-01-01 12:00:00 UTC' {} +

rm -f sample-ext4.img
E2FSPROGS_FAKE_TIME=1704110400 mkfs.ext4 -q -F -L sample -U 6a1c0d3e-5b1f-4b8e-9d1a-2f0e7c3b9a10 \
    -E hash_seed=0b6f1e4c-8a2d-4f3b-9c5e-1d7a0e2b4c6f,root_owner=0:0 \
    -d "$src" sample-ext4.img 4M
echo "built images/sample-ext4.img"

rm -f sample-squashfs.img
mksquashfs "$src" sample-squashfs.img -comp zstd -mkfs-time 1704110400 -noappend -quiet -no-progress
echo "built images/sample-squashfs.img"
