"""Fixtures shared by the whole suite.

``images`` is the session's :class:`tests.support.images.ImageCache`: source trees and
images are built once per session (or once ever, with ``PYFSMOUNT_TEST_CACHE=DIR`` in
the environment) and the kernel's scan of each image is cached with them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.images import ImageCache
from tests.support.trees import Manifest

TOOLS = ("mke2fs", "debugfs", "e2fsck", "tune2fs", "losetup", "mount", "umount", "cp")


def image_building_unavailable() -> str | None:
    """Why images cannot be built and mounted here, or None."""
    if os.geteuid() != 0:
        return "needs root (owners, devices, loop mounts)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    if not Path("/dev/loop-control").exists():
        return "no loop devices"
    return None


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageCache:
    """Trees and images built at most once per session: ``images.get("standard", "ext4")``."""
    reason = image_building_unavailable()
    if reason:
        pytest.skip(reason)
    return ImageCache(
        tmp_path_factory.mktemp("images"),
        persistent=os.environ.get("PYFSMOUNT_TEST_CACHE") or None,
    )


@pytest.fixture(scope="session")
def standard_tree(images: ImageCache) -> Manifest:
    """The manifest of the ``standard`` source tree (everything but the big directory)."""
    return images.tree("standard")
