"""Shared test infrastructure: generated source trees, images built by the public tools,
kernel mounts as the oracle, and scans that compare one view of a file system with another.

* :mod:`tests.support.trees` -- ``build_tree()``: deterministic source trees and their manifest.
* :mod:`tests.support.images` -- ``build_ext()`` with named ``OPTION_SETS``, ``ImageCache``.
* :mod:`tests.support.kernel` -- ``kernel_mount()`` and ``fuse_cleanup()``.
* :mod:`tests.support.scan` -- ``scan_path()``, ``scan_volume()``, ``diff_scans()``,
  ``assert_scans_equal()``, ``assert_same_tree()``.

A differential test in three lines (``images`` is the session fixture of tests/conftest.py)::

    expected = images.kernel_scan("standard", "ext4")      # the kernel's loop mount, cached
    ... mount images.get("standard", "ext4") with pyfsmount at mnt (a subprocess) ...
    assert_same_tree(None, mnt, expected=expected, label="ext4")
"""
