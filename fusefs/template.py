"""The driver template: a process that has imported everything and forks a driver per mount.

Starting a driver as ``python -m fusefs.driver`` costs an interpreter start and the
imports of pyfuse3, trio and every format (about 200 ms here), on every mount.  The
template pays that once: it imports what a driver needs (the same list the sandbox
preloads), freezes the garbage collector's view of it (so children share those pages
instead of dirtying them), and then forks.  Each child is exactly what ``python -m
fusefs.driver`` would have been: it runs :func:`fusefs.driver.run`, enters the sandbox
itself and talks to its launcher over its own control socket.  Where the template may
(root), each driver is forked as pid 1 of a pid namespace of its own and the template
waits for it itself (:func:`fusefs.sandbox.fork_as_pid_one`): the driver then needs no
waiting parent in the sandbox, which would hold a second copy of its written pages.

Only the process that started the template can ask it for drivers: requests arrive on
a private socketpair (the *line*), never on a path.  Each request brings a fresh
channel over the line; on that channel come the driver's control socket, the image
and the write end of its log pipe, and go back the driver's pid (with a pidfd, so it
can be signalled without a pid-reuse race) and, when it ends, its exit code::

    line:     {"channel": true} + [channel fd]
    channel:  {"start": true} + [control fd, image fd, log fd]  ->  {"pid": N} + [pidfd]
              ... later                                        <-  {"exit": CODE}

A request asking for an unconfined driver is refused: the template runs as root, and
``sandbox=off`` is for debugging with ``python -m fusefs.driver`` only.

The template serves until its line closes (its starter exited).  Drivers outlive it:
they are reparented and go on serving; their launchers then learn of their end from
the pidfd, without an exit code.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from fusefs.control import (
    ControlError,
    control_pair,
    recv_message,
    send_message,
    wait_readable,
)

log = logging.getLogger("pyfsmount")

#: What a launcher reports when a template-started driver ended while the template was
#: gone, so that nobody could read its exit status.
EXIT_UNKNOWN = 1


# --- the template process --------------------------------------------------------------


@dataclass
class _Running:
    """A forked driver, the channel its launcher waits on, and (while the template is
    the driver's only parent) the write end of its log, to report a seccomp kill on."""

    channel: socket.socket
    pidfd: int
    log_fd: int | None = None


@dataclass
class _TemplateServer:
    line: socket.socket
    running: dict[int, _Running] = field(default_factory=dict)
    channels: dict[int, socket.socket] = field(default_factory=dict)
    #: Whether drivers are forked as pid 1 of pid namespaces the template makes (it
    #: needs CAP_SYS_ADMIN); if not, each makes its own, with a waiting parent.
    pid_namespaces: bool = True

    def serve(self) -> None:
        """Answer requests until the line closes; report every child's end."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        try:
            while self.serve_once(wake_r):
                pass
        finally:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            wake_r.close()
            wake_w.close()

    def serve_once(self, wake: socket.socket) -> bool:
        watched = [self.line, wake, *self.channels.values()]
        try:
            readable = wait_readable(watched)
        except InterruptedError:
            readable = []
        for sock in readable:
            if sock is wake:
                with contextlib.suppress(BlockingIOError):
                    wake.recv(4096)
            elif sock is self.line:
                if not self.accept_channel():
                    return False
            else:
                self.start_from(sock)
        self.reap()
        return True

    def accept_channel(self) -> bool:
        try:
            _, fds = recv_message(self.line)
        except (ControlError, OSError):
            return False  # the starter is gone
        for fd in fds:
            channel = socket.socket(fileno=fd)
            self.channels[channel.fileno()] = channel
        return True

    def start_from(self, channel: socket.socket) -> None:
        """One start request on a channel: fork the driver, or say why not."""
        del self.channels[channel.fileno()]
        try:
            request, fds = recv_message(channel)
        except (ControlError, OSError):
            channel.close()
            return
        if len(fds) != 3 or not request.get("start"):
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(OSError):
                send_message(channel, {"error": "a start request carries 3 descriptors"})
            channel.close()
            return
        control_fd, image_fd, log_fd = fds
        try:
            pid, pid_one = self.fork_driver()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(OSError):
                send_message(channel, {"error": f"fork: {exc.strerror}"})
            channel.close()
            return
        if pid == 0:
            _become_driver(control_fd, image_fd, log_fd, pid_one)
        os.close(control_fd)
        os.close(image_fd)
        if not pid_one:  # the driver's own waiter reports a seccomp kill
            os.close(log_fd)
        pidfd = os.pidfd_open(pid)
        self.running[pid] = _Running(channel, pidfd, log_fd if pid_one else None)
        with contextlib.suppress(OSError):  # if the launcher left, so will the driver
            send_message(channel, {"pid": pid}, [pidfd])

    def fork_driver(self) -> tuple[int, bool]:
        """Fork a driver (0 in the child, its pid here) and say whether it is pid 1 of a
        pid namespace of its own, with the template as its parent (fork_as_pid_one)."""
        from fusefs import sandbox  # the template's side only: launchers need not load it

        if self.pid_namespaces:
            try:
                return sandbox.fork_as_pid_one(), True
            except sandbox.SandboxError as exc:
                log.warning("%s: drivers make their own pid namespaces from now on", exc)
                self.pid_namespaces = False
        return os.fork(), False

    def reap(self) -> None:
        while self.running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.running.pop(pid, None)
            if child is None:
                continue
            os.close(child.pidfd)
            if child.log_fd is not None:
                from fusefs import sandbox

                sandbox.report_seccomp_kill(child.log_fd, pid, status)
                os.close(child.log_fd)
            with contextlib.suppress(OSError):
                send_message(child.channel, {"exit": os.waitstatus_to_exitcode(status)})
            child.channel.close()


def _become_driver(control_fd: int, image_fd: int, log_fd: int, pid_one: bool) -> None:
    """In the forked child: become what ``python -m fusefs.driver`` would be, never return.

    ``pid_one``: it is pid 1 of a pid namespace of its own already (fork_driver)."""
    code = 70
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        os.setsid()  # as start_new_session: a terminal's ^C goes to the launcher
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(log_fd, 2)
        for fd in {devnull, log_fd} - {0, 1, 2}:
            os.close(fd)
        _close_all_but({0, 1, 2, control_fd, image_fd})
        gc.unfreeze()
        from fusefs.driver import serve_and_exit

        serve_and_exit(control_fd, image_fd, forked_by_template=True, pid_one=pid_one)
    finally:
        os._exit(code)


def _close_all_but(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def raise_descriptor_limit() -> None:
    """Lift the soft limit on open descriptors to the hard one.

    Resident processes hold a few descriptors per mount: a broker its drivers' control
    sockets, log pipes, template channels and pidfds; the template a channel, a pidfd
    and a log pipe per driver.  systemd's default soft limit of 1,024 would end a
    broker near 250 mounts.  (Drivers set their own limit when confined.)
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    """``python -m fusefs.template LINE_FD``: prepare, then serve the line."""
    line = socket.socket(fileno=int(sys.argv[1]))
    raise_descriptor_limit()
    from fusefs import driver, sandbox  # noqa: F401  (pyfuse3, trio, the daemon)

    sandbox.preload()
    sandbox.precompile_seccomp()
    gc.collect()
    gc.freeze()  # children share the imported objects' pages instead of copying them
    send_message(line, {"ready": True})
    _TemplateServer(line).serve()
    os._exit(0)


# --- the launcher's side ---------------------------------------------------------------


class TemplateError(Exception):
    """The template could not be started or could not start a driver."""


class TemplateDriver:
    """A driver forked by a template: its pid, exit and kill, as ``subprocess.Popen`` has."""

    def __init__(self, channel: socket.socket, pid: int, pidfd: int) -> None:
        self.channel = channel
        self.pid = pid
        self.pidfd = pidfd
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        return self._collect(0.0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._collect(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"driver {self.pid}", timeout or 0.0)
        return code

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(OSError):  # gone already, or collected meanwhile
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def _collect(self, timeout: float | None) -> int | None:
        with self._lock:
            if self.returncode is not None:
                return self.returncode
            ready = wait_readable([self.channel.fileno(), self.pidfd], timeout)
            if not ready:
                return None
            if self.channel.fileno() in ready:
                try:
                    message, _ = recv_message(self.channel)
                    code = int(message["exit"])
                except (ControlError, OSError, KeyError, TypeError, ValueError):
                    code = self._wait_orphan()
            else:
                # The driver has ended; its exit code follows from the template.
                code = self._collect_exit_message()
            self.returncode = code
            self.channel.close()
            os.close(self.pidfd)
            return code

    def _collect_exit_message(self) -> int:
        ready = wait_readable([self.channel], 5.0)
        if not ready:
            return EXIT_UNKNOWN
        try:
            message, _ = recv_message(self.channel)
            return int(message["exit"])
        except (ControlError, OSError, KeyError, TypeError, ValueError):
            return EXIT_UNKNOWN

    def _wait_orphan(self) -> int:
        """The template is gone: wait for the driver's end by its pidfd; no code to read."""
        wait_readable([self.pidfd])
        return EXIT_UNKNOWN


class Template:
    """A running template process and the line to it (see the module docstring)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.process = subprocess.Popen(
                module_command("fusefs.template", str(theirs.fileno())),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
                env=_template_environment(),
            )
        self.line = ours
        self._lock = threading.Lock()
        try:
            reply, _ = recv_message(self.line)
        except (ControlError, OSError) as exc:
            self.close()
            raise TemplateError(f"the driver template did not start: {exc}") from None
        if not reply.get("ready"):
            self.close()
            raise TemplateError("the driver template did not start")

    def start(self, control_fd: int, image_fd: int, log_fd: int) -> TemplateDriver:
        """Fork a driver holding these three descriptors (the caller keeps its copies)."""
        channel, theirs = control_pair()
        try:
            with self._lock, theirs:
                send_message(self.line, {"channel": True}, [theirs.fileno()])
            send_message(channel, {"start": True}, [control_fd, image_fd, log_fd])
            reply, fds = recv_message(channel)
        except (ControlError, OSError) as exc:
            channel.close()
            raise TemplateError(f"the driver template failed: {exc}") from None
        if "pid" not in reply or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            channel.close()
            raise TemplateError(f"the driver template refused: {reply.get('error', reply)}")
        return TemplateDriver(channel, int(reply["pid"]), fds[0])

    def close(self) -> None:
        """End the template (running drivers go on serving)."""
        self.line.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Template:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def module_command(module: str, *args: str) -> list[str]:
    """``python -P -m MODULE ARGS``: this interpreter running one of our modules.

    ``-P``: plain ``-m`` puts the working directory first on sys.path, so root running
    ``pyfsmount`` in a directory another user can write (/tmp, a home directory) would
    import that user's ``fusefs/driver.py`` as root, before any confinement.
    """
    return [sys.executable, "-P", "-m", module, *args]


def _template_environment() -> dict[str, str]:
    from fusefs.launch import driver_environment

    return driver_environment()


if __name__ == "__main__":
    main()
