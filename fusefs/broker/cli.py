"""``pyfsmount-broker``: the service, and its list and unmount commands."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import stat
import sys
from types import FrameType

from fusefs.broker import DEFAULT_SOCKET
from fusefs.broker.client import BrokerClient, BrokerError
from fusefs.broker.policy import PolicyError, load_policy
from fusefs.broker.service import Broker
from fusefs.template import Template, TemplateError, raise_descriptor_limit

log = logging.getLogger("pyfsmount.broker")

USAGE = """\
pyfsmount-broker [--socket PATH] [--policy FILE] [-v]
pyfsmount-broker list [--socket PATH]
pyfsmount-broker unmount [--socket PATH] ID
"""

DESCRIPTION = """\
Mount disk images for unprivileged callers. The broker listens on a Unix socket (varlink:
see io.pyfsmount.Broker.varlink); a caller sends an open image and gets a read-only mount
at a directory it owns, or a detached mount fd. Each image is parsed by its own confined
pyfsmount driver, never by the kernel. Run as root, in the foreground, or socket-activated
by systemd (pyfsmount-broker.socket). `list` shows the caller's mounts (root: all);
`unmount ID` removes one.
"""

EPILOG = """\
exit status: 0 success, 1 usage or policy-file error, 32 the broker refused or failed.
"""


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("list", "unmount"):
        sys.exit(client_command(args))
    sys.exit(serve_command(args))


def serve_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pyfsmount-broker",
        usage=USAGE,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help=f"(default {DEFAULT_SOCKET})")
    parser.add_argument("--policy", help="TOML policy file (default: built-in, see docs)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="pyfsmount-broker: %(message)s",
        stream=sys.stderr,
    )
    if os.geteuid() != 0:
        print("pyfsmount-broker: must run as root", file=sys.stderr)
        return 1
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(f"pyfsmount-broker: policy: {exc}", file=sys.stderr)
        return 1
    raise_descriptor_limit()
    try:
        listener = inherited_listener() or bind_listener(args.socket)
    except OSError as exc:
        print(f"pyfsmount-broker: {args.socket}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        template: Template | None = Template()
    except TemplateError as exc:
        log.warning("%s; starting each driver afresh", exc)
        template = None
    broker = Broker(listener, policy, template)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping (mounts stay)", signal.Signals(signum).name)
        broker.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    log.info("listening on %s, policy %s", listener.getsockname() or "(inherited)", policy.source)
    try:
        broker.serve_forever()
    finally:
        if template is not None:
            template.close()
    return 0


def inherited_listener() -> socket.socket | None:
    """The socket systemd passed (LISTEN_FDS=1, LISTEN_PID ours), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return socket.socket(fileno=3)


def bind_listener(path: str) -> socket.socket:
    """A listening socket at ``path`` that anyone may connect to (the policy decides)."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # left by an earlier broker
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o666)
    listener.listen(64)
    return listener


def client_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"pyfsmount-broker {argv[0]}", usage=USAGE)
    parser.add_argument("--socket", default=DEFAULT_SOCKET)
    if argv[0] == "unmount":
        parser.add_argument("id", type=int, help="the mount's id, as list shows it")
    args = parser.parse_args(argv[1:])
    try:
        with BrokerClient(args.socket) as broker:
            if argv[0] == "unmount":
                broker.unmount(args.id)
                return 0
            for mount in broker.list():
                where = "detached" if mount.get("detached") else mount.get("target")
                print(f"{mount['id']}\tuid={mount['uid']}\t{mount['type']}\t{where}")
    except BrokerError as exc:
        print(f"pyfsmount-broker: {exc}", file=sys.stderr)
        return 32
    except OSError as exc:
        print(f"pyfsmount-broker: {args.socket}: {exc.strerror or exc}", file=sys.stderr)
        return 32
    return 0
