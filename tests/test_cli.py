"""The pyfsmount command line: usage, options and failures answered with one line, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusefs.options import (
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    OptionError,
    parse_options,
    parse_size,
)
from tests.launcher import (
    SAMPLE_IMAGE,
    driver_pids,
    mounted_fs_type,
    mountpoint,
    run_pyfsmount,
)

__all__ = ["mountpoint"]


def assert_one_line_failure(result: object, code: int, *fragments: str) -> None:
    stderr = result.stderr  # type: ignore[attr-defined]
    assert result.returncode == code, stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("pyfsmount")]
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_describes_usage_options_and_exit_status() -> None:
    result = run_pyfsmount("--help")
    assert result.returncode == 0
    for text in ("IMAGE", "DIR", "-o", "allow_other", "offset=", "uid=", "umask=", "exit status"):
        assert text in result.stdout


def test_version_is_printed() -> None:
    result = run_pyfsmount("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("pyfsmount 0.")


def test_missing_arguments_is_a_usage_error() -> None:
    result = run_pyfsmount()
    assert result.returncode == 1
    assert "usage:" in result.stderr and "Traceback" not in result.stderr


def test_rw_is_refused_with_a_message(mountpoint: Path) -> None:
    result = run_pyfsmount("-o", "rw", str(SAMPLE_IMAGE), str(mountpoint))
    assert_one_line_failure(result, 1, "read-only", "rw")
    assert mounted_fs_type(mountpoint) is None


@pytest.mark.parametrize(
    ("option", "fragment"),
    [("uid=alice", "numeric"), ("umask=999", "octal"), ("offset=12q", "size"), ("fd=3", "itself")],
)
def test_malformed_options_are_refused(mountpoint: Path, option: str, fragment: str) -> None:
    result = run_pyfsmount("-o", option, str(SAMPLE_IMAGE), str(mountpoint))
    assert_one_line_failure(result, 1, fragment)


def test_unknown_driver_option_is_refused_by_the_driver(mountpoint: Path) -> None:
    result = run_pyfsmount("-o", "frobnicate", str(SAMPLE_IMAGE), str(mountpoint))
    assert_one_line_failure(result, 32, "frobnicate")
    assert mounted_fs_type(mountpoint) is None


def test_missing_image_is_a_usage_error(mountpoint: Path, tmp_path: Path) -> None:
    result = run_pyfsmount(str(tmp_path / "nope.img"), str(mountpoint))
    assert_one_line_failure(result, 1, "nope.img", "No such file")


def test_image_without_a_file_system_is_refused(mountpoint: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\x5a" * 1024 * 1024)
    before = set(driver_pids())
    result = run_pyfsmount(str(junk), str(mountpoint))
    assert_one_line_failure(result, 32, "no supported file system")
    assert mounted_fs_type(mountpoint) is None
    assert set(driver_pids()) <= before


def test_wrong_type_is_refused(mountpoint: Path) -> None:
    result = run_pyfsmount("-t", "btrfs", str(SAMPLE_IMAGE), str(mountpoint))
    assert_one_line_failure(result, 32, "btrfs")


def test_mountpoint_must_be_a_directory(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = run_pyfsmount(str(SAMPLE_IMAGE), str(not_a_dir))
    assert_one_line_failure(result, 1, "not a directory")
    result = run_pyfsmount(str(SAMPLE_IMAGE), str(tmp_path / "missing"))
    assert_one_line_failure(result, 1, "missing", "No such file")


def test_options_fold_in_order_with_safe_defaults() -> None:
    opts = parse_options(["uid=1000,gid=100", "umask=022,noexec", "suid,noload,x-systemd.auto"])
    assert (opts.uid, opts.gid, opts.umask) == (1000, 100, 0o022)
    assert opts.flags & MS_RDONLY and opts.flags & MS_NODEV and opts.flags & MS_NOEXEC
    assert not opts.flags & MS_NOSUID
    assert opts.driver_options == {"noload": ""}
    assert parse_options([]).flags == MS_RDONLY | MS_NOSUID | MS_NODEV


def test_sizes_take_suffixes() -> None:
    assert parse_size("1M", "offset") == 1 << 20
    assert parse_size("0x200", "offset") == 512
    assert parse_size("4KiB", "offset") == 4096
    with pytest.raises(OptionError):
        parse_size("-1", "offset")
