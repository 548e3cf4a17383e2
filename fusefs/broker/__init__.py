"""The broker: mounts images for unprivileged callers over a Unix socket, under a policy.

A caller sends an open image (SCM_RIGHTS, never a path) and gets back either a mount at
a directory it owns or a detached mount fd to attach in a namespace of its own. Each
mount has its own confined driver, forked from a driver template. The protocol is
varlink (see ``io.pyfsmount.Broker.varlink`` beside this file and docs/BROKER.md).

- :mod:`fusefs.broker.varlink`: the wire format (NUL-terminated JSON, passed fds);
- :mod:`fusefs.broker.policy`: what is allowed, from a TOML file;
- :mod:`fusefs.broker.service`: the service itself;
- :mod:`fusefs.broker.client`: the client API, and ``pyfsmount --broker``;
- :mod:`fusefs.broker.cli`: the ``pyfsmount-broker`` command.
"""

#: Where the broker listens unless told otherwise (systemd/pyfsmount-broker.socket).
DEFAULT_SOCKET = "/run/pyfsmount/broker.sock"
