#!/usr/bin/env bash
# Install what pyfsmount needs on a fresh Debian machine: system packages (once) and
# a virtualenv at .venv with the project and its test tools (again when pyproject changes).
# Safe to run repeatedly; quiet when there is nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv e2fsprogs fuse2fs
                 squashfs-tools squashfs-tools-ng squashfuse liblzo2-2 dosfstools mtools fusefat attr acl
                 libseccomp2 util-linux fdisk gdisk strace)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "bootstrap: installing Debian packages: ${missing[*]}" >&2
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Debian's own Python, so that every user (not only the one who built .venv) can run
# pyfsmount: ordinary users mount through fusermount3 with the same interpreter.
PYTHON=${PYTHON:-/usr/bin/python3}
[ -x "$PYTHON" ] || PYTHON=python3
if ! grep -qx "home = $(dirname "$(command -v "$PYTHON")")" .venv/pyvenv.cfg 2>/dev/null; then
    echo "bootstrap: creating .venv with $PYTHON" >&2
    rm -rf .venv
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.pyfsmount-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "bootstrap: installing pyfsmount into .venv" >&2
    if ! .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' > .venv/pip.log 2>&1; then
        cat .venv/pip.log >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
