"""The driver process: one per mount, started by the launcher as ``python -m fusefs.driver``.

It owns nothing but the descriptors it was given (the image, read-only, and the control
socket) and never opens a path itself.  Its life:

1. read its configuration from the control socket;
2. confine itself (fusefs.sandbox; skipped only with ``-o sandbox=off``);
3. open the volume and report ``ok`` or the one-line reason;
4. receive the already-mounted /dev/fuse descriptor and serve it until unmounted.

Logs go to stderr, which the launcher forwards to the terminal or syslog.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from drivers.base import BlockReader, CorruptImage, Unsupported, Volume
from drivers.pagecache import cached_fraction
from drivers.registry import describe_disk, open_disk, open_volume
from fusefs import session
from fusefs.busypoll import BusyPoller, worth_polling
from fusefs.control import ControlError, recv_message, send_message
from fusefs.daemon import AttrOverrides, VolumeOperations
from fusefs.heaptrim import HeapTrimmer, keep_freed_buffers
from fusefs.prefetch import DirectoryPrefetcher
from fusefs.sandbox import SandboxError, SandboxLimits, confine, install_seccomp
from fusefs.watchdog import DEFAULT_TIMEOUT, RequestTimeout, RequestWatchdog

log = logging.getLogger("pyfsmount")

EXIT_OK = 0
EXIT_REFUSED = 2
EXIT_BUG = 70  # EX_SOFTWARE


def setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def open_random(image_fd: int) -> int | None:
    """The image opened once more, with the kernel's read-ahead off, for random reads of
    file data (:meth:`drivers.base.BlockReader.read_random`); None if that fails (they
    then share the launcher's descriptor).

    Reopened like :func:`open_bulk`: read-ahead advice applies to the whole open file,
    and the launcher's descriptor keeps read-ahead for metadata and consecutive files.
    """
    try:
        fd = os.open(f"/proc/self/fd/{image_fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        log.debug("no descriptor for random reads of the image: %s", exc.strerror)
        return None
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    except OSError as exc:
        log.debug("random reads of the image keep read-ahead: %s", exc.strerror)
    return fd


#: Share of an image's pages in the page cache at mount time above which the driver
#: reads its file data through the cache rather than around it.
CACHED_IMAGE = 0.9


def image_cached(image_fd: int) -> bool:
    """Whether the image is (almost) all in the page cache: just written, copied or read.

    Asked once, before confinement: a confined driver may not ask (cachestat(2) is
    refused for a file its user may not write), and would read such an image from the
    disk again (:func:`open_bulk`), at the disk's pace rather than the memory's.
    """
    try:
        fraction = cached_fraction(image_fd)
    except OSError:
        return False
    return fraction is not None and fraction >= CACHED_IMAGE


#: virtio-balloon free page reporting: the smallest block of free memory (a page order)
#: this VM hands back to its host.
PAGE_REPORTING_ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")
#: The virtio balloon devices bound to their driver (none: no reporting is done).
BALLOON_DEVICES = Path("/sys/bus/virtio/drivers/virtio_balloon")


def page_orders(buddyinfo: Path = Path("/proc/buddyinfo")) -> int:
    """How many page orders the buddy allocator has (one past the largest order)."""
    first_zone = buddyinfo.read_text().split("\n", 1)[0].split()
    return len(first_zone) - 4  # "Node 0, zone DMA", then a count per order


def host_reclaims_free_memory(
    order: Path = PAGE_REPORTING_ORDER,
    balloon: Path = BALLOON_DEVICES,
    buddyinfo: Path = Path("/proc/buddyinfo"),
) -> bool:
    """Whether this machine hands free memory back to a host: a VM whose balloon device
    reports free pages (of an order the allocator has).

    There, memory freed since the host last took it back costs a host fault on its
    first touch, so filling the page cache is slow: a buffered 512 MiB read of an image
    ran at 320-380 MB/s some seconds after the cache was emptied, against 1,310-1,530
    with the reporting paused (benchmarks/RESULTS.md, 2026-12-03 night).
    """
    try:
        reported = int(order.read_text())
        return reported < page_orders(buddyinfo) and any(balloon.glob("virtio*"))
    except (OSError, ValueError):
        return False


def open_bulk(image_fd: int) -> int | None:
    """The image opened once more, for file data read ahead of sequential readers
    (drivers.readahead, :meth:`drivers.base.BlockReader.read_bulk`); None if it cannot be.

    Buffered, with sequential read-ahead advice: the kernel reads far ahead of the
    workers. Where filling the page cache is slow (:func:`host_reclaims_free_memory`),
    with O_DIRECT instead: the mount's cache is then the only one filled. Measured with
    the 512 MiB benchmark files on host-backed memory, buffered against O_DIRECT: ext4
    1,100 against 842 MB/s, FAT32 1,110 against 858; on memory handed back to the host,
    630 against 767 (ext4).

    Done before the sandbox closes the way to /proc: the descriptor's own magic link
    reopens exactly the file the launcher opened, read-only.
    """
    path = f"/proc/self/fd/{image_fd}"
    if host_reclaims_free_memory():
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as exc:
            log.debug("no O_DIRECT reads of the image: %s", exc.strerror)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        log.debug("no descriptor for bulk reads of the image: %s", exc.strerror)
        return None
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return fd


def open_configured_volume(
    image_fd: int,
    config: dict[str, Any],
    bulk_fd: int | None = None,
    random_fd: int | None = None,
) -> Volume:
    """The volume of the image, of the partition asked for, or of the first usable one.

    An explicit ``offset=`` names where the file system starts: no partition table is
    looked for then (unless ``partition=`` asks for one inside that window).
    """
    offset = int(config.get("offset", 0))
    reader = BlockReader(image_fd, offset, bulk_fd=bulk_fd, random_fd=random_fd)
    fs_type, options = config.get("fs_type"), config.get("driver_options") or {}
    partition = config.get("partition")
    if reader.base and partition is None:
        return open_volume(reader, fs_type, options)
    return open_disk(reader, fs_type, options, partition)


async def serve_until_stopped(operations: VolumeOperations, busy_poll_us: int) -> None:
    """Serve FUSE requests until the mount goes away or SIGTERM/SIGINT/SIGHUP arrives."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal, nursery.cancel_scope)
        operations.prefetcher = DirectoryPrefetcher(operations.listing, operations.watchdog)
        nursery.start_soon(operations.prefetcher.run)
        keep_freed_buffers()  # the trimmer returns them instead
        trimmer = HeapTrimmer()
        nursery.start_soon(trimmer.run)
        operations.request_done = trimmer.touch
        if busy_poll_us > 0:
            poller = BusyPoller(busy_poll_us / 1e6)

            def request_done() -> None:
                poller.touch()
                trimmer.touch()

            operations.request_done = request_done
            nursery.start_soon(poller.run)
        # One request at a time: no handler awaits, so more reader tasks only add trio
        # scheduling to every request (~10% of a small-file read); and that one reader
        # takes a queued request without a scheduler pass (fusefs.session). Returns when
        # the kernel ends the connection (unmount).
        session.install(busy_poll_us / 1e6)
        await pyfuse3.main(min_tasks=1, max_tasks=1)
        nursery.cancel_scope.cancel()


async def stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s: stopping", signal.Signals(signum).name)
            scope.cancel()
            return


def report_listing(control: socket.socket, image_fd: int, config: dict[str, Any]) -> int:
    """``pyfsmount --list``: describe the partitions (parsed here, confined) and exit."""
    try:
        listing = describe_disk(BlockReader(image_fd, int(config.get("offset", 0))))
    except (Unsupported, CorruptImage) as exc:
        send_message(control, {"ok": False, "error": str(exc)})
        return EXIT_REFUSED
    except Exception as exc:
        log.exception("reading the partition table failed")
        send_message(control, {"ok": False, "error": f"internal error: {exc!r}"})
        return EXIT_BUG
    send_message(control, {"ok": True, "listing": listing})
    return EXIT_OK


def run(
    control: socket.socket, image_fd: int, forked_by_template: bool = False, pid_one: bool = False
) -> int:
    """Be the driver: confine, open the volume, serve.  ``pid_one``: the template made
    this process pid 1 of a pid namespace of its own (fusefs.sandbox.fork_as_pid_one)."""
    config, _ = recv_message(control)
    setup_logging(bool(config.get("debug")))
    if forked_by_template and not config.get("sandbox", True):
        # The template runs as root for whoever started it: it makes confined drivers only.
        send_message(control, {"ok": False, "error": "sandbox=off is refused by the template"})
        return EXIT_REFUSED
    busy_poll_us = int(config.get("busy_poll_us", 0)) if worth_polling() else 0
    watchdog = RequestWatchdog(float(config.get("request_timeout", DEFAULT_TIMEOUT)))
    bulk_fd = random_fd = None
    if not config.get("list"):
        random_fd = open_random(image_fd)
        if image_cached(image_fd):
            log.debug("the image is in the page cache: file data is read from there")
        else:
            bulk_fd = open_bulk(image_fd)
    if config.get("sandbox", True):
        try:
            limits = SandboxLimits(max_memory=int(config.get("max_memory") or 512 * 2**20))
            kept = {0, 1, 2, image_fd, control.fileno()}
            kept |= {fd for fd in (bulk_fd, random_fd) if fd is not None}
            confine(kept, limits, pid_one)
            # In the process that serves (confine forks, and a fork has no timers), and
            # before the seccomp filter: setitimer is not on the allowlist.
            watchdog.arm()
            install_seccomp()
        except SandboxError as exc:
            send_message(control, {"ok": False, "error": f"cannot confine the driver: {exc}"})
            return EXIT_REFUSED
    else:
        log.warning("sandbox=off: this driver runs unconfined (debugging only)")
        watchdog.arm()
    if config.get("list"):
        return report_listing(control, image_fd, config)
    try:
        watchdog.begin("opening the volume")
        try:
            volume = open_configured_volume(image_fd, config, bulk_fd, random_fd)
        finally:
            watchdog.end()
    except (Unsupported, CorruptImage, RequestTimeout) as exc:
        send_message(control, {"ok": False, "error": str(exc)})
        return EXIT_REFUSED
    except Exception as exc:
        log.exception("opening the volume failed")
        send_message(control, {"ok": False, "error": f"internal error: {exc!r}"})
        return EXIT_BUG
    send_message(control, {"ok": True, "fs_type": volume.fs_type, "label": volume.label})

    _, fds = recv_message(control)
    if not fds:
        return EXIT_OK  # the launcher gave up (mount failed); nothing to serve
    overrides = AttrOverrides(
        uid=config.get("uid"), gid=config.get("gid"), umask=config.get("umask")
    )
    operations = VolumeOperations(volume, overrides, watchdog)
    pyfuse3.init(operations, f"/dev/fd/{fds[0]}", set())
    try:
        send_message(control, {"serving": True})
        trio.run(serve_until_stopped, operations, busy_poll_us)
    finally:
        pyfuse3.close(unmount=False)
    return EXIT_OK


def main() -> None:
    """``python -m fusefs.driver CONTROL_FD IMAGE_FD``."""
    control_fd, image_fd = (int(arg) for arg in sys.argv[1:3])
    serve_and_exit(control_fd, image_fd)


def serve_and_exit(
    control_fd: int, image_fd: int, forked_by_template: bool = False, pid_one: bool = False
) -> None:
    """Be the driver of one mount, then exit the process (never returns)."""
    control = socket.socket(fileno=control_fd)
    try:
        code = run(control, image_fd, forked_by_template, pid_one)
    except ControlError as exc:
        print(f"pyfsmount driver: {exc}", file=sys.stderr)
        code = EXIT_BUG
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
