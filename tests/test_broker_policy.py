"""The broker's policy file: what it allows, and a clear message for what it cannot read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fusefs.broker.policy import ALL_TYPES, Policy, PolicyError, load_policy
from tests.launcher import PROJECT


def policy_from(tmp_path: Path, text: str) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return load_policy(str(path))


def test_the_default_allows_every_format_to_everyone() -> None:
    policy = load_policy(None)
    assert all(policy.type_refusal(fs, trusted=False) is None for fs in ALL_TYPES)
    assert policy.caller_allowed(1000, 1000)
    assert policy.target_results and policy.detached_results


def test_a_full_policy_is_read(tmp_path: Path) -> None:
    policy = policy_from(
        tmp_path,
        "[callers]\nuids = [1000]\ngids = [50]\n"
        '[filesystems]\nallowed = ["squashfs"]\ntrusted_only = ["ext4"]\n'
        f'[images]\ntrusted_directories = ["{tmp_path}/images"]\nmax_size = "1G"\n'
        '[limits]\nmounts_per_user = 2\nmounts_total = 3\nmemory_per_mount = "256M"\n'
        "[results]\ndetached = false\n",
    )
    assert (policy.max_size, policy.memory_per_mount) == (1 << 30, 256 << 20)
    assert (policy.mounts_per_user, policy.mounts_total) == (2, 3)
    assert not policy.detached_results and policy.target_results
    assert policy.caller_allowed(1000, 7) and policy.caller_allowed(7, 50)
    assert not policy.caller_allowed(7, 7)
    assert policy.caller_allowed(0, 0)  # root always may
    assert policy.type_refusal("squashfs", trusted=False) is None
    assert policy.type_refusal("ext4", trusted=True) is None
    assert "trusted directory" in (policy.type_refusal("ext4", trusted=False) or "")
    assert "not an allowed" in (policy.type_refusal("vfat", trusted=True) or "")
    assert policy.is_trusted(f"{tmp_path}/images/a.img")
    assert not policy.is_trusted(f"{tmp_path}/images-not/a.img")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[limits\n", "policy.toml"),
        ("[surprise]\n", "unknown section(s): surprise"),
        ("[limits]\nmounts = 3\n", "unknown key(s): mounts"),
        ('[filesystems]\nallowed = ["btrfs"]\n', "unknown file system type(s)"),
        ('[images]\nmax_size = "huge"\n', "not a size"),
        ('[images]\ntrusted_directories = ["relative"]\n', "not an absolute path"),
        ("[callers]\nuids = [-1]\n", "must be a list of ids"),
        ('[results]\ntarget = "yes"\n', "must be true or false"),
    ],
)
def test_an_unusable_policy_is_refused_with_a_reason(
    tmp_path: Path, text: str, fragment: str
) -> None:
    with pytest.raises(PolicyError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        policy_from(tmp_path, text)


def test_the_broker_will_not_start_on_an_unusable_policy(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nmounts = 3\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusefs.broker",
            "--socket",
            str(tmp_path / "s"),
            "--policy",
            str(bad),
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"pyfsmount-broker: policy: {bad}: [limits]: unknown key(s): mounts"
    ]
