"""``pyfsmount-intercept``: run a command whose mount(2) calls become pyfsmount mounts."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import socket
import sys

from fusefs import seccomp
from fusefs.intercept.notify import ACT_NOTIFY, NotifyError, install_listener
from fusefs.intercept.supervisor import REDIRECT_DEFAULT, InterceptPolicy, Supervisor
from fusefs.template import Template, TemplateError

log = logging.getLogger("pyfsmount.intercept")

DESCRIPTION = """\
Run COMMAND with its mount(2) calls sent to this supervisor (seccomp user notification).
A mount of a type in --redirect (default: ext2, ext3, ext4, squashfs, vfat, msdos) becomes
a read-only pyfsmount mount at the same target, as the caller sees it: the image is parsed
by a confined driver, never by the kernel. Types in --allow are mounted by the kernel (with
the caller's own rights); any other type gets EPERM. Remounts, bind and move mounts and
propagation changes go to the kernel. The new mount API is answered the same way:
fsopen(2) of a redirected type gives a context that fsconfig(2) and fsmount(2) turn into
a pyfsmount mount, which move_mount(2) attaches. Data options (uid=, umask=, codepage=,
...) go to the driver. Run as root; COMMAND typically runs in new user and mount
namespaces (--userns).
"""

EPILOG = """\
exit status: COMMAND's, or 1 for a usage error, 126 if COMMAND could not be started.
example: pyfsmount-intercept --userns -- sh -c 'mount -t ext4 -o ro disk.img /mnt; ls /mnt'
"""

CLONE_NEWNS, CLONE_NEWUSER = 0x20000, 0x10000000
MS_REC, MS_PRIVATE = 0x4000, 0x40000
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
    parser.add_argument("--redirect", default=",".join(sorted(REDIRECT_DEFAULT)), help="types")
    parser.add_argument("--allow", default="", help="types the kernel may mount (e.g. tmpfs)")
    parser.add_argument(
        "--userns",
        action="store_true",
        help="run COMMAND as root of new user and mount namespaces (your uid mapped to 0)",
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
    policy = InterceptPolicy(
        redirect=frozenset(t for t in args.redirect.split(",") if t),
        allow=frozenset(t for t in args.allow.split(",") if t),
    )
    unknown = policy.redirect - REDIRECT_DEFAULT
    if unknown:
        parser.error(f"--redirect: pyfsmount cannot mount {', '.join(sorted(unknown))}")
    try:
        template: Template | None = Template()
    except TemplateError:
        template = None
    try:
        sys.exit(run(command, policy, template, args.userns))
    finally:
        if template is not None:
            template.close()


def run(
    command: list[str], policy: InterceptPolicy, template: Template | None, userns: bool
) -> int:
    """Start COMMAND under the filter, then supervise it until it exits."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    child = os.fork()
    if child == 0:
        ours.close()
        code = 126
        try:
            _become_command(theirs, command, userns)
        except BaseException as exc:  # reported, then this child exits
            print(f"pyfsmount-intercept: {command[0]}: {exc}", file=sys.stderr)
        finally:
            os._exit(code)
    theirs.close()
    _, fds, _, _ = socket.recv_fds(ours, 16, 1)
    ours.close()
    if not fds:
        _, status = os.waitpid(child, 0)
        return os.waitstatus_to_exitcode(status)
    supervisor = Supervisor(fds[0], policy, template)
    try:
        return supervisor.serve(child)
    finally:
        os.close(fds[0])
        supervisor.wait_for_drivers(timeout=10)


def _become_command(channel: socket.socket, command: list[str], userns: bool) -> None:
    """In the child: namespaces, the filter, the listener to the parent, then exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    if userns:
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")
        if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "making mounts private")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "no_new_privs")
    rules = [seccomp.Rule(name, ACT_NOTIFY) for name in TRAPPED_CALLS]
    try:
        listener = install_listener(rules)
    except NotifyError as exc:
        raise OSError(exc.errno, f"seccomp: {exc.strerror}") from None
    socket.send_fds(channel, [b"listener"], [listener])
    os.close(listener)
    channel.close()
    os.execvp(command[0], command)
