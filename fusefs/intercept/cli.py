"""``pyfsmount-intercept``: run a command whose mount(2) calls become pyfsmount mounts."""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import socket
import sys

from fusefs import seccomp
from fusefs.intercept.loop import (
    BLKGETSIZE64,
    IOCTL_LOOP,
    IOCTL_MASK,
    LoopDevices,
    cover_loop_devices,
)
from fusefs.intercept.notify import ACT_NOTIFY, NotifyError, install_listener
from fusefs.intercept.policy import REDIRECT_DEFAULT, InterceptPolicy, PolicyError, load_policy
from fusefs.intercept.supervisor import Supervisor
from fusefs.libc import LIBC
from fusefs.mount import CLONE_NEWNS, CLONE_NEWUSER
from fusefs.options import MS_NODEV, MS_NOEXEC, MS_NOSUID
from fusefs.template import Template, TemplateError

log = logging.getLogger("pyfsmount.intercept")

DESCRIPTION = """\
Run COMMAND with its mount calls sent to this supervisor (seccomp user notification).
A mount of a type in --redirect (default: ext2, ext3, ext4, squashfs, vfat, msdos) becomes
a read-only pyfsmount mount at the same target, as the caller sees it: the image is parsed
by a confined driver, never by the kernel. Types in --allow are mounted by the kernel (with
the caller's own rights); any other type gets EPERM. Remounts, bind and move mounts and
propagation changes go to the kernel. The new mount API is answered the same way:
fsopen(2) of a redirected type gives a context that fsconfig(2) and fsmount(2) turn into
a pyfsmount mount, which move_mount(2) attaches. Data options (uid=, umask=, codepage=,
...) go to the driver. Loop devices are emulated (unless --host-loop): COMMAND's
/dev/loop-control and /dev/loopN are stand-ins, so mount -o loop works for callers that
may not set up a loop device, and no loop device is ever set up. Run as root; COMMAND
typically runs in new user and mount namespaces (--userns); it always gets a mount
namespace of its own.
"""

EPILOG = """\
exit status: COMMAND's; 2 for a usage error, 1 for an unusable policy file, 126 if
COMMAND could not be started.
example: pyfsmount-intercept --userns -- sh -c 'mount -t ext4 -o ro disk.img /mnt; ls /mnt'
"""

MS_REC, MS_PRIVATE, MS_SLAVE = 0x4000, 0x40000, 0x80000
RUN_MOUNT = "/run/mount"
PR_SET_NO_NEW_PRIVS = 38
#: The mount family. Nothing else is trapped: the command's other calls run at full speed.
TRAPPED_CALLS = ("mount", "fsopen", "fsconfig", "fsmount", "move_mount", "open_tree")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="pyfsmount-intercept",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--policy", metavar="FILE", help="a TOML policy (types to redirect and allow, loop)"
    )
    parser.add_argument(
        "--redirect",
        metavar="TYPES",
        help=f"types that become pyfsmount mounts (default: {','.join(sorted(REDIRECT_DEFAULT))})",
    )
    parser.add_argument(
        "--allow", metavar="TYPES", help="types the kernel may mount itself (e.g. tmpfs,proc)"
    )
    parser.add_argument(
        "--userns",
        action="store_true",
        help="run COMMAND as root of new user and mount namespaces (your uid mapped to 0)",
    )
    parser.add_argument(
        "--host-loop",
        action="store_true",
        help="let COMMAND use the host's loop devices, where it may, instead of emulated ones",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every trapped call")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no COMMAND")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="pyfsmount-intercept: %(message)s",
    )
    try:
        policy = _command_line_policy(args)
    except PolicyError as exc:
        print(f"pyfsmount-intercept: {exc}", file=sys.stderr)
        sys.exit(1)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        template: Template | None = Template()
    except TemplateError:
        template = None
    try:
        sys.exit(run(command, policy, template, args.userns))
    finally:
        if template is not None:
            template.close()


def _command_line_policy(args: argparse.Namespace) -> InterceptPolicy:
    """The policy file's (or the default), with what the command line says over it."""
    policy = load_policy(args.policy)
    changes: dict[str, object] = {}
    if args.redirect is not None:
        changes["redirect"] = frozenset(t for t in args.redirect.split(",") if t)
    if args.allow is not None:
        changes["allow"] = frozenset(t for t in args.allow.split(",") if t)
    if args.host_loop:
        changes["emulate_loop"] = False
    return policy.replace(**changes)


def run(
    command: list[str], policy: InterceptPolicy, template: Template | None, userns: bool
) -> int:
    """Start COMMAND under the filter, then supervise it until it exits."""
    emulate_loop = policy.emulate_loop
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    child = os.fork()
    if child == 0:
        ours.close()
        code = 126
        try:
            _become_command(theirs, command, userns, emulate_loop)
        except BaseException as exc:  # reported, then this child exits
            print(f"pyfsmount-intercept: {command[0]}: {exc}", file=sys.stderr)
        finally:
            os._exit(code)
    theirs.close()
    data, fds, _, _ = socket.recv_fds(ours, 65536, 1)
    ours.close()
    if not fds:
        _, status = os.waitpid(child, 0)
        return os.waitstatus_to_exitcode(status)
    covered = json.loads(data)
    loops = LoopDevices(fds[0], covered) if covered else None
    supervisor = Supervisor(fds[0], policy, template, loops)
    try:
        return supervisor.serve(child)
    finally:
        os.close(fds[0])
        supervisor.wait_for_drivers(timeout=10)


def private_mount_table() -> None:
    """Give the command its own /run/mount (an empty tmpfs, writable by all of it).

    libmount keeps there what the kernel does not (utab: "loop", "user", helper
    options). A command that owns a user namespace of its own cannot write the host's,
    and mount(8) then fails after a successful mount ("failed to update userspace mount
    table"); a command that can would mix its private mounts into the host's table.
    """
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if LIBC.mount(b"pyfsmount-utab", RUN_MOUNT.encode(), b"tmpfs", flags, b"mode=1777,size=1m"):
        raise OSError(ctypes.get_errno(), f"mounting a tmpfs at {RUN_MOUNT}")


def _become_command(
    channel: socket.socket, command: list[str], userns: bool, emulate_loop: bool
) -> None:
    """In the child: namespaces (and the loop stand-ins), the filter, the listener to the
    parent, then exec."""
    if emulate_loop or userns:
        # Where libmount would make it on first use; made while still root here, so
        # that the command's own table can be mounted over it (private_mount_table).
        os.makedirs(RUN_MOUNT, mode=0o755, exist_ok=True)
    if userns:
        uid, gid = os.getuid(), os.getgid()
        if LIBC.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")
        if LIBC.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "making mounts private")
    covered: dict[str, object] = {}
    if emulate_loop:
        if not userns:  # the stand-ins need a mount namespace of the command's own
            if LIBC.unshare(CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "unshare")
            if LIBC.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None) != 0:
                raise OSError(ctypes.get_errno(), "making mounts slaves")
        covered = cover_loop_devices()
    if emulate_loop or userns:
        private_mount_table()
    if LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "no_new_privs")
    rules = [seccomp.Rule(name, ACT_NOTIFY) for name in TRAPPED_CALLS]
    if emulate_loop:
        loop_command = seccomp.Cmp(1, seccomp.CMP_MASKED_EQ, IOCTL_MASK, IOCTL_LOOP)
        rules.append(seccomp.Rule("ioctl", ACT_NOTIFY, (loop_command,)))
        size_query = seccomp.Cmp(1, seccomp.CMP_EQ, BLKGETSIZE64)
        rules.append(seccomp.Rule("ioctl", ACT_NOTIFY, (size_query,)))
    try:
        listener = install_listener(rules)
    except NotifyError as exc:
        raise OSError(exc.errno, f"seccomp: {exc.strerror}") from None
    socket.send_fds(channel, [json.dumps(covered).encode()], [listener])
    os.close(listener)
    channel.close()
    os.execvp(command[0], command)
