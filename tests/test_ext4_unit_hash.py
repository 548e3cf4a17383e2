"""htree name hashes against e2fsprogs' own (debugfs dx_hash), all six variants."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid

import pytest

from drivers.ext4.dirhash import dirhash

pytestmark = pytest.mark.skipif(shutil.which("debugfs") is None, reason="needs debugfs")

NAMES = [
    b"a",
    b"hello",
    b"lost+found",
    b"entry-00042-nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn",
    "héllo_wörld".encode(),
    bytes(range(0x80, 0x80 + 40)),
    b"x" * 255,
    b"0123456789abcdef" * 2,
    b"0123456789abcdef" * 2 + b"!",
]
SEEDS = [None, "0b6f1e4c-8a2d-4f3b-9c5e-1d7a0e2b4c6f"]


def debugfs_hashes(version: int, seed: str | None) -> list[int]:
    args = f"-h {version}" + (f" -s {seed}" if seed else "")
    script = b"".join(b"dx_hash %s %s\n" % (args.encode(), name) for name in NAMES)
    out = subprocess.run(
        ["debugfs", "-f", "-"], input=script, capture_output=True, check=True
    ).stdout
    hashes = [int(m, 16) for m in re.findall(rb"is (0x[0-9a-f]+) \(minor", out)]
    assert len(hashes) == len(NAMES), out
    return hashes


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("version", range(6))
def test_dirhash_matches_e2fsprogs(version: int, seed: str | None) -> None:
    words = None
    if seed:
        raw = uuid.UUID(seed).bytes
        words = tuple(int.from_bytes(raw[i : i + 4], "little") for i in range(0, 16, 4))
    expected = debugfs_hashes(version, seed)
    assert [dirhash(name, version, words) for name in NAMES] == expected


def test_unknown_hash_version() -> None:
    assert dirhash(b"a", 6, None) is None
    assert dirhash(b"a", 99, None) is None
