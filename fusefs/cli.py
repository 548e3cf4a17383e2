"""``pyfsmount``: mount an untrusted disk image read-only through a confined FUSE driver."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, NoReturn

from fusefs.broker import DEFAULT_SOCKET
from fusefs.launch import (
    EXIT_FAILURE,
    EXIT_USAGE,
    LaunchError,
    list_partitions,
    run_background,
    run_foreground,
)
from fusefs.options import MountOptions, OptionError, parse_options

log = logging.getLogger("pyfsmount")

DESCRIPTION = """\
Mount the file system in IMAGE (a file or a block device) read-only at DIR.

The image is parsed in user space by a driver process of its own, never by the kernel,
so images from untrusted sources can be mounted safely. Supported: ext2, ext3, ext4,
squashfs and FAT12/16/32 (vfat). The type is detected from the image unless -t names
it. A whole-disk image with an MBR or GPT partition table mounts its first partition
holding a supported file system, or the one -o partition=N names; `pyfsmount --list
IMAGE` shows them.

pyfsmount returns once the mount is ready and leaves a daemon serving it. Unmount with
`fusermount3 -u DIR` or `umount DIR`; SIGTERM to the daemon unmounts too.
"""

EPILOG = """\
mount options (-o, comma-separated, mount(8) style):
  ro                 read-only (the default and the only mode; rw is refused)
  allow_other        let other users in (for non-root: user_allow_other in /etc/fuse.conf);
                     the kernel still enforces the modes the image shows
  uid=N, gid=N       show every file as owned by this user / group
  umask=MODE         clear these permission bits (octal) on every file
  fsname=NAME        the source shown in /proc/mounts (default: the image path)
  offset=BYTES       where the file system starts inside the image (1M, 0x100000, ...)
  partition=N        mount partition N of a partitioned disk image (Linux numbering:
                     MBR primaries 1-4, logical partitions from 5, GPT entries 1-128)
  nosuid, nodev      on by default for untrusted images; suid, dev turn them off
  noexec, noatime    passed to the kernel
  max_memory=BYTES   address-space budget of the driver process (default 512M)
  request_timeout=S  CPU seconds one request may take before it is abandoned with EIO
                     and logged (default 5; 0 = no limit); the mount keeps serving
  busy_poll=USEC     after each request, poll this long for the next one instead of
                     sleeping (default 200; 0 = off): trades CPU for latency
  sandbox=off        run the driver unconfined (debugging only; loudly warned about)
  noload             ext3/ext4: ignore the journal of an image that needs recovery
  dmask=, fmask=     vfat: permission bits cleared on directories / files (default 022)
  codepage=N         vfat: OEM code page of 8.3 names (default 437)
  tz=UTC             vfat: times are UTC (default: this machine's local time, as vfat)
  shortname=, showexec, rodir, time_offset=   vfat, as the kernel's (drivers/fat/NOTES.md)
  Options mount(8) and fstab use (defaults, nofail, _netdev, x-*, ...) are accepted.

listing partitions:
  pyfsmount --list disk.img     the table, each partition's type, size, offset and file system

as a mount helper:
  mount -t fuse.pyfsmount IMAGE DIR -o ro
  fstab:  /srv/images/disk.img  /mnt/disk  fuse.pyfsmount  ro,nofail  0 0

exit status:
  0   the mount is ready (with -f: it ended cleanly)
  1   incorrect invocation, unreadable image or mount point
  32  the mount failed: the image is refused (the reason is printed) or FUSE failed
"""


class Parser(argparse.ArgumentParser):
    """argparse with mount(8)'s exit status for bad usage (1, not 2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n")


def build_parser() -> Parser:
    parser = Parser(
        prog="pyfsmount",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action=VersionAction, help="print the version and exit")
    parser.add_argument("image", metavar="IMAGE", help="disk image file or block device")
    parser.add_argument("mountpoint", metavar="DIR", nargs="?", help="directory to mount on")
    parser.add_argument(
        "-l",
        "--list",
        action="store_true",
        help="list the partitions of IMAGE and the file system in each "
        "(parsed by a confined driver), then exit; no DIR",
    )
    parser.add_argument(
        "-t",
        "--type",
        dest="fs_type",
        metavar="TYPE",
        help="file system type: ext2, ext3, ext4, squashfs, vfat (default: "
        "detect); fuse.pyfsmount and fuse.TYPE are accepted",
    )
    parser.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTS",
        help="comma-separated mount options (see below); may repeat",
    )
    parser.add_argument(
        "-f", "--foreground", action="store_true", help="stay in the foreground until unmounted"
    )
    parser.add_argument(
        "--broker",
        "--via-broker",
        action="store_true",
        help="ask the pyfsmount broker to mount (no root, no /dev/fuse needed; DIR must be "
        "yours); it takes -t and -o uid=, gid=, offset=, partition=, allow_other",
    )
    parser.add_argument(
        "--broker-socket",
        default=DEFAULT_SOCKET,
        metavar="SOCKET",
        help=f"the broker's socket (default {DEFAULT_SOCKET})",
    )
    parser.add_argument("-d", "--debug", action="store_true", help="log every request (implies -f)")
    # Flags mount(8) passes to helpers: sloppy, no-mtab, verbose.
    parser.add_argument("-s", dest="sloppy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-n", dest="no_mtab", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true", help="say more about what happens")
    return parser


class VersionAction(argparse.Action):
    """``--version``, looked up only when asked for (see :func:`version`)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(
            option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=str(kwargs.get("help"))
        )

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"pyfsmount {version()}")
        parser.exit()


def version() -> str:
    import importlib.metadata  # only for --version: it costs a mount 25 ms of imports

    try:
        return importlib.metadata.version("pyfsmount")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def normalise_type(fs_type: str | None) -> str | None:
    """``fuse.pyfsmount`` means 'detect'; ``fuse.ext4`` and ``ext4`` mean ext4."""
    if fs_type is None or fs_type in ("fuse.pyfsmount", "pyfsmount", "auto"):
        return None
    return fs_type.removeprefix("fuse.")


def setup_terminal_logging(level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pyfsmount: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def switch_to_syslog() -> None:
    """A daemon has no terminal: log to syslog when there is one, else nowhere."""
    import logging.handlers  # here, not at the top: every mount's start waits for imports

    handlers: list[logging.Handler] = []
    if os.path.exists("/dev/log"):
        try:
            handler = logging.handlers.SysLogHandler(
                address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON
            )
            handler.setFormatter(logging.Formatter(f"pyfsmount[{os.getpid()}]: %(message)s"))
            handlers.append(handler)
        except OSError:
            pass
    log.handlers[:] = handlers or [logging.NullHandler()]
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def main(argv: list[str] | None = None) -> NoReturn:
    args = build_parser().parse_args(argv)
    foreground = args.foreground or args.debug
    setup_terminal_logging(
        logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    )
    try:
        options = parse_options(args.options)
    except OptionError as exc:
        print(f"pyfsmount: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    options.fs_type = normalise_type(args.fs_type) or options.fs_type
    options.debug = options.debug or args.debug
    if args.list:
        sys.exit(list_image(args.image, options))
    if args.mountpoint is None:
        build_parser().error("the following arguments are required: DIR")
    if args.broker:
        sys.exit(mount_via_broker(args.broker_socket, args.image, args.mountpoint, options))
    if not options.sandbox:
        log.warning(
            "WARNING: sandbox=off: the driver parses %s unconfined; a crafted image can "
            "then attack this machine. Use only for debugging.",
            args.image,
        )
    try:
        if foreground:
            code = run_foreground(args.image, args.mountpoint, options)
        else:
            code = run_background(args.image, args.mountpoint, options, switch_to_syslog)
    except LaunchError as exc:
        print(f"pyfsmount: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = EXIT_FAILURE
    sys.exit(code)


def mount_via_broker(socket_path: str, image: str, target: str, options: MountOptions) -> int:
    """``--broker``: send the open image and the directory to the broker."""
    from fusefs.broker.client import BrokerClient, BrokerError

    parameters = {
        "type": options.fs_type,
        "offset": options.offset or None,
        "partition": options.partition,
        "uid": options.uid,
        "gid": options.gid,
        "allowOther": options.allow_other or None,
    }
    try:
        with open(image, "rb") as opened, BrokerClient(socket_path) as broker:
            given: dict[str, Any] = {k: v for k, v in parameters.items() if v is not None}
            mounted = broker.mount(opened.fileno(), directory=target, **given)
    except BrokerError as exc:
        print(f"pyfsmount: the broker refused: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        where = exc.filename or socket_path
        print(f"pyfsmount: {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    log.info("mounted %s (%s) at %s as broker mount %d", image, mounted.type, target, mounted.id)
    return 0


def list_image(image: str, options: MountOptions) -> int:
    """``--list``: print the partition table and what each partition holds."""
    try:
        lines = list_partitions(image, options)
    except LaunchError as exc:
        print(f"pyfsmount: {exc}", file=sys.stderr)
        return exc.exit_code
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    main()
