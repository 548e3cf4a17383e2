"""The supervisor: answers a sandboxed program's mount(2) calls (and the new mount API's).

For each trapped mount(2): a call that parses no image (remount, bind, move, propagation
changes) or whose type the policy passes (tmpfs, proc, ...) is left to the kernel, which
runs it with the caller's own credentials and checks; a type the policy redirects
(ext2/3/4, squashfs, vfat) becomes a pyfsmount mount; anything else gets EPERM.

A redirect, step by step:

0. The caller must be one the kernel would let mount (CAP_SYS_ADMIN over its mount
   namespace): the interceptor gives no one a mount it could not have made itself.
1. A helper process joins the caller's mount namespace, takes its root and working
   directory, and opens the source and the target there with the caller's file-system
   ids and groups (setfsuid/setfsgid): what the caller could not open, it cannot mount.
2. The supervisor starts a confined driver on the image (the same driver, sandbox and
   checks as every pyfsmount mount) and, once the driver accepts the image, makes a
   detached FUSE mount (fsmount) owned by the caller's uid, read-only, nosuid, nodev.
3. The helper attaches it at the target (move_mount); the call returns 0, and the caller
   sees a normal mount. When the caller unmounts it, or its namespace ends, the driver
   exits.

fsopen, fsconfig and fsmount of a redirected type take the same steps, one per call
(fusefs.intercept.newapi); the caller attaches the mount itself with move_mount.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from fusefs.control import wait_readable
from fusefs.intercept.caller import (
    CallerView,
    CallRefused,
    caller_options,
    may_mount,
    mount_namespace_is_ours,
)
from fusefs.intercept.loop import Attachment, LoopDevices
from fusefs.intercept.newapi import KEY_MAX, FsContext, FsContexts
from fusefs.intercept.notify import (
    Call,
    NotifyError,
    ensure_waiting,
    identity,
    read_string,
    receive,
    replace_fd,
    respond,
)
from fusefs.intercept.policy import DRIVER_TYPES, InterceptPolicy
from fusefs.launch import DriverProcess, LaunchError, abandon, open_in_driver, serve
from fusefs.mount import (
    MountError,
    MountRequest,
    fuse_context,
    mount_detached,
    unescape_mountinfo,
)
from fusefs.options import (
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MountOptions,
)
from fusefs.template import Template

log = logging.getLogger("pyfsmount.intercept")

MS_REMOUNT, MS_BIND, MS_MOVE = 0x20, 0x1000, 0x2000
MS_PROPAGATION = 0x10000 | 0x20000 | 0x40000 | 0x100000  # unbindable, private, slave, shared


@dataclass
class Supervisor:
    listener: int
    policy: InterceptPolicy
    template: Template | None = None
    #: The emulated loop devices (None: the command uses the host's, where it may).
    loops: LoopDevices | None = None
    supervisors: list[threading.Thread] = field(default_factory=list)
    contexts: FsContexts = field(init=False)

    def __post_init__(self) -> None:
        self.contexts = FsContexts(self.listener)

    def serve(self, child: int) -> int:
        """Answer trapped calls until ``child`` exits; return its exit code."""
        try:
            while True:
                watched = [self.listener, *self.contexts.stand_ins()]
                ready = wait_readable(watched, 0.2)
                for fd in ready:
                    if fd != self.listener:
                        self.contexts.hung_up(fd)
                    elif (call := receive(self.listener)) is not None:
                        self.answer(call)
                pid, status = os.waitpid(child, os.WNOHANG)
                if pid == child:
                    return os.waitstatus_to_exitcode(status)
        finally:
            self.contexts.close()
            if self.loops is not None:
                self.loops.close()

    def answer(self, call: Call) -> None:
        handler = {
            "mount": self.answer_mount,
            "fsopen": self.answer_fsopen,
            "fsconfig": self.answer_fsconfig,
            "fsmount": self.answer_fsmount,
            "ioctl": self.answer_ioctl,
        }.get(call.name, self.pass_through)
        try:
            handler(call)
        except OSError as exc:  # NotifyError, CallRefused, or the caller gone from /proc
            log.warning("pid %d: %s: %s", call.pid, call.name, exc.strerror or exc)
            respond(self.listener, call.id, error=exc.errno or errno.EIO)

    def answer_ioctl(self, call: Call) -> None:
        """A loop device command (the only ioctls trapped): emulated on a stand-in."""
        if self.loops is None:
            respond(self.listener, call.id, proceed=True)
        else:
            self.loops.answer(call)

    def pass_through(self, call: Call) -> None:
        """move_mount and open_tree attach or copy mounts that exist: no image is parsed."""
        log.info("pid %d: %s: passed to the kernel", call.pid, call.name)
        respond(self.listener, call.id, proceed=True)

    def answer_mount(self, call: Call) -> None:
        source = read_string(self.listener, call, call.args[0])
        target = read_string(self.listener, call, call.args[1])
        fs_type = read_string(self.listener, call, call.args[2]) or ""
        flags = call.args[3]
        what = f"pid {call.pid}: mount({source!r}, {target!r}, {fs_type!r}, 0x{flags:x})"
        if flags & MS_REMOUNT and target is not None and _is_ours(call.pid, target):
            # The superblock is the supervisor's: the caller may not change it, but asking
            # for what it already is (read-only) succeeds, as on any read-only device.
            result = 0 if flags & MS_RDONLY else errno.EROFS
            log.info("%s: remount of a pyfsmount mount: %s", what, os.strerror(result) or "ok")
            respond(self.listener, call.id, error=result)
            return
        if (
            flags & (MS_REMOUNT | MS_BIND | MS_MOVE | MS_PROPAGATION)
            or fs_type in self.policy.allow
        ):
            # No image is parsed here (or the policy trusts the type): the kernel runs the
            # call with the caller's own credentials, in the caller's own namespaces.
            log.info("%s: passed to the kernel", what)
            respond(self.listener, call.id, proceed=True)
            return
        if fs_type not in self.policy.redirect:
            log.info("%s: denied (EPERM)", what)
            respond(self.listener, call.id, error=errno.EPERM)
            return
        if source is None or target is None:
            respond(self.listener, call.id, error=errno.EFAULT)
            return
        if not self.caller_may_mount(call):
            log.info("%s: denied (EPERM): the caller may not mount", what)
            respond(self.listener, call.id, error=errno.EPERM)
            return
        data = read_string(self.listener, call, call.args[4]) or ""
        options = caller_options(call.pid, DRIVER_TYPES[fs_type], data.split(","))
        if data:
            what = f"{what[:-1]}, {data!r})"
        try:
            self.redirect(call, source, target, options, flags)
        except CallRefused as exc:
            log.info("%s: %s", what, exc.strerror)
            respond(self.listener, call.id, error=exc.errno or errno.EIO)
            return
        log.info("%s: redirected to pyfsmount", what)
        respond(self.listener, call.id)

    def answer_fsopen(self, call: Call) -> None:
        fs_type = read_string(self.listener, call, call.args[0], KEY_MAX)
        what = f"pid {call.pid}: fsopen({fs_type!r})"
        if fs_type is None:
            # libmount 2.39+ asks fsopen(NULL) whether the API exists: the kernel's EFAULT
            # says it does (ENOSYS would send it back to mount(2)).
            respond(self.listener, call.id, error=errno.EFAULT)
        elif fs_type in self.policy.allow:
            log.info("%s: passed to the kernel", what)
            respond(self.listener, call.id, proceed=True)
        elif fs_type in self.policy.redirect and not self.caller_may_mount(call):
            log.info("%s: denied (EPERM): the caller may not mount", what)
            respond(self.listener, call.id, error=errno.EPERM)
        elif fs_type in self.policy.redirect:
            self.contexts.fsopen(call, DRIVER_TYPES[fs_type])
        else:
            log.info("%s: denied (EPERM)", what)
            respond(self.listener, call.id, error=errno.EPERM)

    def caller_may_mount(self, call: Call) -> bool:
        """The kernel's test, for a call the kernel will not see (:func:`may_mount`)."""
        allowed = may_mount(call.pid)
        ensure_waiting(self.listener, call)
        return allowed

    def answer_fsconfig(self, call: Call) -> None:
        context = self.contexts.find(call)
        if context is None:  # a context the kernel made (a type the policy allows)
            respond(self.listener, call.id, proceed=True)
            return
        result = self.contexts.fsconfig(call, context)
        if result is None:
            result = self.create(call, context)
        respond(self.listener, call.id, error=result)

    def create(self, call: Call, context: FsContext) -> int:
        """FSCONFIG_CMD_CREATE: the source opened as the caller, a driver that accepts it."""
        what = f"pid {call.pid}: fsconfig({context.fs_type}, CMD_CREATE, {context.source!r})"
        context.phase = "failed"  # unless all goes well: then no second try, as the kernel
        try:
            if context.source is None:
                raise CallRefused(errno.EINVAL, "no source")
            options = caller_options(call.pid, context.fs_type, context.options)
            with CallerView(call.pid) as view:
                image_fd, _ = view.open_paths(context.source, None)
            try:
                context.loop = self.loop_behind(image_fd, options)
                context.driver = self.start_driver(call, image_fd, context.source, options)
            finally:
                os.close(image_fd)
        except CallRefused as exc:
            log.info("%s: %s", what, exc.strerror)
            return exc.errno or errno.EIO
        context.fs_ids, context.phase = view.fs_ids, "created"
        log.info("%s: a driver accepted the image", what)
        return 0

    def answer_fsmount(self, call: Call) -> None:
        context = self.contexts.find(call)
        if context is None:
            respond(self.listener, call.id, proceed=True)
            return
        if context.phase != "created":
            respond(self.listener, call.id, error=errno.EBUSY)
            return
        assert context.driver is not None and context.source is not None
        driver, context.driver, context.phase = context.driver, None, "mounted"
        request = self.request(context.source, context.fs_ids, 0)
        fs_fd = self.served(call, driver, request, fuse_context, context.loop)
        try:
            replace_fd(self.listener, call.id, fs_fd, call.args[0], context.cloexec)
        finally:
            os.close(fs_fd)  # if the caller has gone, so has the context, and the driver
        log.info(
            "pid %d: fsmount(%s): of a pyfsmount context, by the kernel", call.pid, context.source
        )
        respond(self.listener, call.id, proceed=True)

    def redirect(
        self, call: Call, source: str, target: str, options: MountOptions, flags: int
    ) -> None:
        """Make the pyfsmount mount the caller asked for, at its target; CallRefused if not."""
        with CallerView(call.pid) as view:
            image_fd, target_fd = view.open_paths(source, target)
            assert target_fd is not None
            try:
                try:
                    loop = self.loop_behind(image_fd, options)
                    driver = self.start_driver(call, image_fd, source, options)
                finally:
                    os.close(image_fd)
                request = self.request(source, view.fs_ids, flags & MS_NOEXEC)
                mount_fd = self.served(call, driver, request, mount_detached, loop)
                try:
                    view.attach(mount_fd, target_fd)
                finally:
                    os.close(mount_fd)
            finally:
                os.close(target_fd)

    def loop_behind(self, image_fd: int, options: MountOptions) -> Attachment | None:
        """The emulated loop device the image was opened through (/dev/loopN covered with
        it), if any: its offset is the mount's."""
        if self.loops is None:
            return None
        info = os.fstat(image_fd)
        attachment = self.loops.attachment_of(identity(info))
        if attachment is not None:
            options.offset = attachment.info.lo_offset
        return attachment

    def start_driver(
        self, call: Call, image_fd: int, source: str, options: MountOptions
    ) -> DriverProcess:
        """A confined driver that has accepted the image; CallRefused(EINVAL) if none does."""
        ensure_waiting(self.listener, call)
        try:
            driver, _ = open_in_driver(image_fd, options, source, self.template)
        except LaunchError as exc:
            log.warning("pid %d: %s", call.pid, exc)
            # What the kernel says of an image it cannot mount.
            raise CallRefused(errno.EINVAL, os.strerror(errno.EINVAL)) from None
        return driver

    @staticmethod
    def request(source: str, owner: tuple[int, int], noexec: int) -> MountRequest:
        """A FUSE mount for the caller: read-only, nosuid, nodev, owned by its uid."""
        flags = MS_RDONLY | MS_NOSUID | MS_NODEV | noexec
        return MountRequest(target="", source=source, flags=flags, owner=owner)

    def served(
        self,
        call: Call,
        driver: DriverProcess,
        request: MountRequest,
        make: Callable[[MountRequest, bool], tuple[int, int]],
        loop: Attachment | None = None,
    ) -> int:
        """``make`` (mount_detached or fuse_context) the FUSE mount or context for the
        caller, served by ``driver``: its fd, ours to close. A thread waits for the
        driver to end, once the mount is gone.

        A caller whose user namespace owns its mount namespace may clear nodev and
        nosuid on its mounts: then the superblock gets a user namespace of its own
        (fusefs.mount.fuse_context says why), where the image's device nodes and
        set-user-ID bits count for nothing."""
        contained = not mount_namespace_is_ours(call.pid)
        try:
            ensure_waiting(self.listener, call)
        except NotifyError:
            abandon(driver)
            raise
        try:
            fuse_fd, made = make(request, contained)
        except MountError as exc:
            abandon(driver)
            raise CallRefused(errno.EIO, str(exc)) from None
        try:
            mount = serve(driver, fuse_fd, "", None)
        except LaunchError as exc:
            os.close(made)
            raise CallRefused(errno.EIO, str(exc)) from None
        loops = self.loops
        if loop is not None and loops is not None:
            loops.mounted(loop)

        def supervise() -> None:
            mount.supervise()
            if loop is not None and loops is not None:
                loops.unmounted(loop)  # an autoclear loop device is free again

        supervisor = threading.Thread(target=supervise, daemon=True)
        supervisor.start()
        self.supervisors.append(supervisor)
        return made

    def wait_for_drivers(self, timeout: float) -> None:
        """Once the command has exited its mounts go (with its namespace): let their
        drivers be seen to end before the template that forked them is closed."""
        for supervisor in self.supervisors:
            supervisor.join(timeout)


def _is_ours(pid: int, target: str) -> bool:
    """Whether the caller's topmost mount at ``target`` is a pyfsmount mount."""
    found = False
    with open(f"/proc/{pid}/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            if os.fsdecode(unescape_mountinfo(fields[4])) == os.path.normpath(target):
                found = fields[fields.index(b"-") + 1] == b"fuse.pyfsmount"
    return found
