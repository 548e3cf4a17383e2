"""The interceptor's policy: a TOML file, the command line over it, and clear refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fusefs.intercept.policy import REDIRECT_DEFAULT, InterceptPolicy, PolicyError, load_policy
from tests.launcher import PROJECT


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "intercept.toml"
    path.write_text(text)
    return str(path)


def test_no_file_is_the_default_policy() -> None:
    policy = load_policy(None)
    assert policy == InterceptPolicy()
    assert (policy.redirect, policy.allow, policy.emulate_loop) == (
        REDIRECT_DEFAULT,
        frozenset(),
        True,
    )


def test_a_file_sets_types_and_loop_emulation(tmp_path: Path) -> None:
    text = '[types]\nredirect = ["ext4"]\nallow = ["tmpfs", "proc"]\n[loop]\nemulate = false\n'
    policy = load_policy(write(tmp_path, text))
    assert policy == InterceptPolicy(frozenset({"ext4"}), frozenset({"tmpfs", "proc"}), False)


def test_keys_left_out_keep_their_defaults(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, '[types]\nallow = ["tmpfs"]\n'))
    assert (policy.redirect, policy.emulate_loop) == (REDIRECT_DEFAULT, True)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[typos]\n", "unknown section(s): typos"),
        ("[types]\nredirekt = []\n", "[types]: unknown key(s): redirekt"),
        ('[types]\nredirect = "ext4"\n', "[types] redirect must be a list of strings"),
        ('[types]\nredirect = ["btrfs"]\n', "pyfsmount cannot mount btrfs"),
        ('[loop]\nemulate = "yes"\n', "[loop] emulate must be true or false"),
        ("[types\n", "intercept.toml"),
    ],
    ids=["section", "key", "type", "redirect", "flag", "syntax"],
)
def test_a_bad_file_is_refused_naming_what_is_wrong(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(PolicyError) as raised:
        load_policy(write(tmp_path, text))
    assert says in str(raised.value)
    assert str(tmp_path) in str(raised.value)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fusefs.intercept", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_unusable_policy_file_stops_the_interceptor_with_one_line(tmp_path: Path) -> None:
    done = run_cli("--policy", write(tmp_path, "[typos]\n"), "--", "true")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"pyfsmount-intercept: {tmp_path}/intercept.toml: unknown section(s): typos"
    ]


def test_a_missing_policy_file_is_named(tmp_path: Path) -> None:
    done = run_cli("--policy", str(tmp_path / "none.toml"), "--", "true")
    assert (done.returncode, "none.toml: No such file or directory" in done.stderr) == (1, True)


def test_an_unknown_redirect_type_is_a_usage_error() -> None:
    done = run_cli("--redirect", "ext4,btrfs", "--", "true")
    assert done.returncode == 2
    assert "pyfsmount cannot mount btrfs" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_command_line_wins_over_the_file(tmp_path: Path) -> None:
    """Through a real run: the file allows tmpfs; --allow "" takes that back, and the
    kernel is not asked. (tests/test_intercept.py shows what each answer does.)"""
    policy = write(tmp_path, '[types]\nredirect = []\nallow = ["tmpfs"]\n')
    script = "mount -t tmpfs none /mnt && grep -q ' /mnt tmpfs ' /proc/self/mounts"
    done = run_cli("--policy", policy, "--userns", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    done = run_cli(
        "--policy", policy, "--allow", "", "--userns", "--", "mount", "-t", "tmpfs", "none", "/mnt"
    )
    assert done.returncode != 0
