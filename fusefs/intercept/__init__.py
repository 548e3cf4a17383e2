"""The interceptor: a supervised program's mount(2) becomes a confined pyfsmount mount.

- :mod:`fusefs.intercept.notify`: seccomp user notification (the kernel interface);
- :mod:`fusefs.intercept.supervisor`: what each trapped call becomes;
- :mod:`fusefs.intercept.cli`: the ``pyfsmount-intercept`` command.
"""
