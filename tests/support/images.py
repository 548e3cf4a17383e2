"""ext2/3/4 images built from source trees by the public tools, with named option sets.

``build_ext(src, dest, option_set)`` runs ``mke2fs -d src`` with a fixed UUID, hash seed
and clock (``E2FSPROGS_FAKE_TIME``), ``LC_ALL=C`` (mke2fs sorts with strcoll) and an
image size estimated from the tree (grown and retried if mke2fs runs out of space),
then the option set's post steps (``e2fsck -D``, ``tune2fs -U``), then a ``debugfs``
fix-up of what ``mke2fs -d`` (1.47.0) does not copy:

* times: it stores whole seconds in 32 bits -- no nanoseconds, nothing after
  2038-01-19 (later times wrap to 1901..1970) -- and the source ctime (the build time);
* the root directory: it gets mke2fs's own mode (0755), owner (the caller) and times.

The fix-up writes every inode's atime/mtime (with nanoseconds and epoch bits when the
inode has room for them) as the manifest (or the source) has them, a ctime derived
from the mtime, and the root's mode/owner/times.  The result is deterministic: the same
tree and option set give the same image bytes.  Pass ``exact=False`` for the plain
``mke2fs -d`` image.

:class:`ImageCache` builds each (tree preset, option set) image once per session, and
caches the kernel's scan of it; ``tests/conftest.py`` exposes it as the ``images``
fixture.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.support import trees as trees_module
from tests.support.kernel import kernel_mount
from tests.support.scan import Scan, list_dir, scan_path
from tests.support.trees import PRESETS, Manifest, TreeParams, build_tree

MiB = 1 << 20
NS = 1_000_000_000

UUID = "6a1c0d3e-5b1f-4b8e-9d1a-2f0e7c3b9a10"
OTHER_UUID = "0c0ffee0-1234-4abc-8def-0123456789ab"
HASH_SEED = "0b6f1e4c-8a2d-4f3b-9c5e-1d7a0e2b4c6f"
FAKE_TIME = 1704110400  # 2024-01-01T12:00:00Z: superblock, root and lost+found times

#: Quiet, no questions, no reserved blocks, a label.
_BASE_ARGS = ("-q", "-F", "-m", "0", "-L", "pyfsmount")


@dataclass(frozen=True)
class OptionSet:
    """One way of making an image: mke2fs arguments and post steps (``{image}`` expands)."""

    name: str
    fstype: str  # what ``mount -t`` and ``mke2fs -t`` call it
    mkfs_args: tuple[str, ...] = ()
    block_size: int = 4096
    inode_size: int = 256
    cluster_size: int | None = None
    post: tuple[tuple[str, ...], ...] = ()
    description: str = ""
    #: Another option set whose image this one starts from (then only ``post`` runs).
    base: str | None = None

    @property
    def has_extra_times(self) -> bool:
        """Whether inodes have room for nanoseconds and epoch bits."""
        return self.inode_size > 128

    def command(
        self, src: str | os.PathLike[str], image: str | os.PathLike[str], size: int, inodes: int
    ) -> list[str]:
        """The mke2fs command line (block and inode sizes always explicit: for images this
        small mke2fs.conf's "small" type would choose 1 KiB blocks)."""
        extended = f"hash_seed={HASH_SEED},lazy_itable_init=0,lazy_journal_init=0"
        options = {
            "-t": self.fstype,
            "-b": str(self.block_size),
            "-I": str(self.inode_size),
            "-N": str(inodes),
            "-U": UUID,
            "-E": extended,
        }
        flat = [item for pair in options.items() for item in pair]
        return ["mke2fs", *_BASE_ARGS, *flat, *self.mkfs_args, "-d", os.fspath(src),
                os.fspath(image), f"{size // 1024}k"]  # fmt: skip


_J = ("-J", "size=4")

OPTION_SETS: dict[str, OptionSet] = {
    o.name: o
    for o in (
        OptionSet("ext2", "ext2", description="no journal, no extents: indirect blocks"),
        OptionSet(
            "ext2-1k",
            "ext2",
            block_size=1024,
            description="1 KiB blocks: triple-indirect blocks within 65 MiB",
        ),
        OptionSet("ext3", "ext3", _J, description="journal, indirect blocks"),
        OptionSet(
            "ext4",
            "ext4",
            _J,
            description="mke2fs.conf's ext4: extents, flex_bg, 64bit, metadata_csum",
        ),
        OptionSet(
            "ext4-1k",
            "ext4",
            _J,
            block_size=1024,
            description="1 KiB blocks: many groups, deeper extent trees",
        ),
        OptionSet(
            "inline_data",
            "ext4",
            (*_J, "-O", "inline_data"),
            description="small files, dirs and symlinks inside the inode",
        ),
        OptionSet(
            "inode128",
            "ext4",
            _J,
            inode_size=128,
            description="128-byte inodes: no extra fields (no ns, 32-bit times)",
        ),
        OptionSet(
            "bigalloc",
            "ext4",
            (*_J, "-O", "bigalloc", "-C", "16384"),
            cluster_size=16384,
            description="16 KiB clusters of 4 KiB blocks",
        ),
        OptionSet(
            "meta_bg",
            "ext4",
            (*_J, "-O", "meta_bg,^resize_inode", "-g", "512"),
            block_size=1024,
            description="meta_bg with 512 KiB groups, so there are several meta groups",
        ),
        OptionSet("nojournal", "ext4", ("-O", "^has_journal"), description="ext4 without journal"),
        OptionSet(
            "64bit-csum",
            "ext4",
            (*_J, "-O", "64bit,metadata_csum,metadata_csum_seed"),
            post=(("tune2fs", "-U", OTHER_UUID, "{image}"),),
            description="64bit + metadata_csum with csum_seed, UUID changed after mkfs "
            "(checksums seeded from s_checksum_seed, not the UUID)",
        ),
        OptionSet(
            "ext4-old",
            "ext4",
            (*_J, "-O", "^64bit,^metadata_csum,uninit_bg"),
            description="32-bit descriptors, gdt_csum (uninit_bg), no metadata_csum",
        ),
        OptionSet(
            "htree",
            "ext4",
            _J,
            post=(("e2fsck", "-fyD", "{image}"),),
            base="ext4",
            description="ext4 with every directory of 2+ blocks indexed (hashed b-tree) "
            "by e2fsck -D",
        ),
        OptionSet(
            "htree-1k",
            "ext4",
            _J,
            block_size=1024,
            base="ext4-1k",
            post=(("tune2fs", "-E", "hash_alg=tea", "{image}"), ("e2fsck", "-fyD", "{image}")),
            description="htree with 1 KiB blocks and the tea hash: a big directory gets "
            "2 index levels",
        ),
    )
}

#: The sets the big-directory tree is built with: a linear directory, and hashed ones with
#: one and two index levels.  (``mke2fs -d`` takes O(entries x blocks) to fill a directory:
#: ~8 s for 10k entries at 4 KiB, ~10 s at 1 KiB; so only these.)
BIGDIR_SETS = ("ext4", "htree", "htree-1k")


@dataclass(frozen=True)
class SquashfsOptionSet:
    """One way of making a squashfs image: a tool and its arguments.

    ``tool`` is ``mksquashfs`` (the source directory), ``sqfstar`` or ``tar2sqfs`` (a tar
    of it on stdin) or ``gensquashfs`` (``--pack-dir``).  ``oracle`` names the set whose
    kernel mount shows the same tree, for images the kernel refuses to mount (legacy
    lzma, which squashfuse and pyfsmount read).
    """

    name: str
    args: tuple[str, ...] = ()
    tool: str = "mksquashfs"
    oracle: str | None = None
    description: str = ""

    @property
    def fstype(self) -> str:
        return "squashfs"

    def command(self, src: str | os.PathLike[str], image: str | os.PathLike[str]) -> list[str]:
        if self.tool == "mksquashfs":
            quiet = ("-noappend", "-quiet", "-no-progress", "-mkfs-time", str(FAKE_TIME))
            return ["mksquashfs", os.fspath(src), os.fspath(image), *quiet, *self.args]
        if self.tool == "sqfstar":
            quiet = ("-quiet", "-no-progress", "-mkfs-time", str(FAKE_TIME))
            return ["sqfstar", *quiet, *self.args, os.fspath(image)]
        if self.tool == "tar2sqfs":
            return ["tar2sqfs", "--quiet", "--force", *self.args, os.fspath(image)]
        if self.tool == "gensquashfs":
            pack = ("--pack-dir", os.fspath(src), "--keep-time", "--keep-xattr", "--force")
            return ["gensquashfs", "--quiet", *pack, *self.args, os.fspath(image)]
        raise ValueError(f"unknown squashfs tool {self.tool}")


SQUASHFS_SETS: dict[str, SquashfsOptionSet] = {
    o.name: o
    for o in (
        SquashfsOptionSet("sq-gzip", description="mksquashfs defaults: gzip, 128 KiB blocks"),
        SquashfsOptionSet("sq-xz", ("-comp", "xz")),
        SquashfsOptionSet("sq-xz-bcj", ("-comp", "xz", "-Xbcj", "x86"), description="xz + BCJ"),
        SquashfsOptionSet("sq-lzo", ("-comp", "lzo")),
        SquashfsOptionSet("sq-lz4", ("-comp", "lz4", "-Xhc")),
        SquashfsOptionSet("sq-zstd", ("-comp", "zstd", "-Xcompression-level", "19")),
        SquashfsOptionSet(
            "sq-lzma",
            ("-comp", "lzma"),
            oracle="sq-gzip",
            description="legacy lzma: the kernel refuses it, squashfuse reads it",
        ),
        SquashfsOptionSet(
            "sq-uncompressed", ("-noI", "-noD", "-noF", "-noX"), description="nothing compressed"
        ),
        SquashfsOptionSet("sq-no-fragments", ("-no-fragments",)),
        SquashfsOptionSet("sq-always-fragments", ("-always-use-fragments",)),
        SquashfsOptionSet("sq-4k", ("-b", "4K"), description="4 KiB blocks: many block lists"),
        SquashfsOptionSet("sq-1m", ("-b", "1M", "-comp", "zstd")),
        SquashfsOptionSet("sq-no-xattrs", ("-no-xattrs",)),
        SquashfsOptionSet("sq-all-root", ("-all-root",)),
        SquashfsOptionSet(
            "sq-sqfstar", ("-comp", "zstd"), tool="sqfstar", description="sqfstar from a tar"
        ),
        SquashfsOptionSet(
            "sq-tar2sqfs",
            ("--compressor", "xz"),
            tool="tar2sqfs",
            description="squashfs-tools-ng's tar2sqfs: another writer's layout",
        ),
        SquashfsOptionSet(
            "sq-gensquashfs",
            ("--compressor", "lz4"),
            tool="gensquashfs",
            description="squashfs-tools-ng's gensquashfs --pack-dir",
        ),
    )
}


def build_squashfs(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    option_set: str | SquashfsOptionSet,
    *,
    manifest: Manifest | None = None,
) -> Path:
    """Make a squashfs image of ``src`` at ``dest`` with one of :data:`SQUASHFS_SETS`."""
    opt = SQUASHFS_SETS[option_set] if isinstance(option_set, str) else option_set
    dest = Path(dest)
    dest.unlink(missing_ok=True)
    if manifest is not None:
        restore_times(manifest)
    if opt.tool == "mksquashfs":
        _run(opt.command(src, dest))
        return dest
    with tempfile.TemporaryDirectory(prefix="sq-src-") as tmp:
        # squashfs-tools-ng and sqfstar refuse what mksquashfs takes in its stride:
        # POSIX ACL xattrs and times outside squashfs's unsigned 32-bit seconds.
        portable = Path(tmp) / "tree"
        _run(["cp", "-a", os.fspath(src), os.fspath(portable)])
        _make_portable(os.fsencode(portable))
        command = opt.command(portable, dest)
        if opt.tool == "gensquashfs":
            _run(command)
            return dest
        tar = ["tar", "-C", os.fspath(portable), "--format=pax", "--xattrs"]
        tar += ["--xattrs-include=*", "--numeric-owner", "-cf", "-", "."]
        with subprocess.Popen(tar, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as source:
            result = subprocess.run(
                command, stdin=source.stdout, capture_output=True, text=True, check=False
            )
    if result.returncode != 0:
        raise ImageBuildError(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}")
    return dest


def _make_portable(root: bytes) -> None:
    """Drop system.* xattrs and clamp times into 1970..2106, everywhere under ``root``."""
    for rel, st in sorted(_walk(root), key=lambda item: -item[0].count(b"/")):
        path = root if rel == b"/" else root + rel
        for name in os.listxattr(path, follow_symlinks=False):
            if name.startswith("system."):
                os.removexattr(path, name, follow_symlinks=False)
        clamp = [min(max(ns, 0), ((1 << 32) - 1) * NS) for ns in (st.st_atime_ns, st.st_mtime_ns)]
        os.utime(path, ns=(clamp[0], clamp[1]), follow_symlinks=False)


def option_set_of(name: str) -> OptionSet | SquashfsOptionSet:
    """The ext or squashfs option set called ``name``."""
    return OPTION_SETS[name] if name in OPTION_SETS else SQUASHFS_SETS[name]


class ImageBuildError(RuntimeError):
    pass


def _run(command: list[str], ok: Iterable[int] = (0,)) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LC_ALL": "C",
        "E2FSPROGS_FAKE_TIME": str(FAKE_TIME),
        "E2FSCK_TIME": str(FAKE_TIME),
    }
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode not in tuple(ok):
        raise ImageBuildError(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}{result.stdout}"
        )
    return result


def _walk(src: bytes) -> Iterable[tuple[bytes, os.stat_result]]:
    """(path, lstat) of ``src`` and everything under it; paths as scan keys."""
    stack = [b"/"]
    while stack:
        rel = stack.pop()
        full = src if rel == b"/" else src + rel
        st = os.lstat(full)
        yield rel, st
        if stat.S_ISDIR(st.st_mode):
            for name in list_dir(full):
                stack.append((rel if rel.endswith(b"/") else rel + b"/") + name)


def estimate(src: str | os.PathLike[str], option_set: OptionSet) -> tuple[int, int]:
    """(image bytes, inode count) that should hold ``src``; mke2fs is retried if not."""
    base = os.fsencode(src)
    unit = option_set.cluster_size or option_set.block_size
    data = 0
    inodes = 0
    for _rel, st in _walk(base):
        inodes += 1
        if stat.S_ISDIR(st.st_mode):
            data += max(st.st_size, unit) * 2
        elif stat.S_ISREG(st.st_mode) and st.st_size:
            # The source's allocation (4 KiB blocks), each block in a unit of its own at
            # worst (bigalloc), plus mapping blocks.
            blocks = st.st_blocks * 512
            data += max(blocks, -(-blocks // 4096) * unit) + unit
        elif stat.S_ISLNK(st.st_mode) and st.st_size >= 60:
            data += unit
    inodes += 64
    journal = 4 * MiB if option_set.fstype != "ext2" else 0
    size = int(data * 1.3) + inodes * option_set.inode_size + journal + 4 * MiB
    return -(-size // MiB) * MiB, inodes


def _split_time(ns: int) -> tuple[int, int]:
    """(i_xtime, i_xtime_extra) of a time in nanoseconds, ext4's encoding."""
    seconds, nsec = divmod(ns, NS)
    low = seconds & 0xFFFFFFFF
    signed_low = low - (1 << 32) if low >= 1 << 31 else low
    epoch = (seconds - signed_low) >> 32
    if not 0 <= epoch <= 3:
        raise ValueError(f"time {ns} is outside ext4's range")
    return low, (nsec << 2) | epoch


def image_time(ns: int, option_set: OptionSet) -> int:
    """What an inode of ``option_set`` can hold of a time: all of it with extra fields,
    else whole seconds in 32 signed bits (wrapped as mke2fs does)."""
    if option_set.has_extra_times:
        return ns
    seconds = ns // NS
    return ((seconds + 2**31) % 2**32 - 2**31) * NS


def derived_ctime(mtime_ns: int) -> int:
    """The ctime given to every inode: its mtime plus 1.000000001 s, kept in ext4's range."""
    limit = (2**34 - 2**31 - 1) * NS
    return mtime_ns + NS + 1 if mtime_ns + NS + 1 <= limit else mtime_ns - NS - 1


def _fix_up(
    image: Path,
    option_set: OptionSet,
    times: Mapping[bytes, tuple[int, int]],
    root: tuple[int, int, int],
) -> None:
    """Write the times and root attributes mke2fs -d does not copy, with debugfs."""
    inodes: dict[int, tuple[int, int]] = {}
    with kernel_mount(image, option_set.fstype) as mounted:
        top = os.fsencode(mounted)
        for rel, (atime, mtime) in times.items():
            try:
                st = os.lstat(top if rel == b"/" else top + rel)
            except FileNotFoundError:
                continue
            inodes.setdefault(st.st_ino, (atime, mtime))
    lines: list[str] = []
    extra = option_set.has_extra_times
    for ino, (atime, mtime) in sorted(inodes.items()):
        for field, value in (("atime", atime), ("mtime", mtime), ("ctime", derived_ctime(mtime))):
            low, high = _split_time(image_time(value, option_set))
            lines.append(f"set_inode_field <{ino}> {field}_lo {low}")
            if extra:
                lines.append(f"set_inode_field <{ino}> {field}_extra {high}")
    mode, uid, gid = root
    lines.append(f"set_inode_field <2> mode 0{mode:o}")
    lines.append(f"set_inode_field <2> uid {uid}")
    lines.append(f"set_inode_field <2> gid {gid}")
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as commands:
        commands.write("\n".join(lines) + "\n")
        commands.flush()
        result = _run(["debugfs", "-w", "-f", commands.name, os.fspath(image)])
    # debugfs reports bad commands on stderr but exits 0.
    errors = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not line.startswith("debugfs ")
    ]
    if errors:
        raise ImageBuildError(f"debugfs on {image}: {errors[:5]}")


def source_times(src: str | os.PathLike[str]) -> dict[bytes, tuple[int, int]]:
    """(atime_ns, mtime_ns) of every path of a source tree, as lstat shows them now."""
    return {rel: (st.st_atime_ns, st.st_mtime_ns) for rel, st in _walk(os.fsencode(src))}


def build_ext(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    option_set: str | OptionSet,
    *,
    manifest: Manifest | None = None,
    size: int | None = None,
    exact: bool = True,
) -> Path:
    """Make an ext2/3/4 image of ``src`` at ``dest`` with one of :data:`OPTION_SETS`.

    With ``manifest`` (the tree's, from :func:`build_tree`), times come from what the
    generator set (the source's atimes move when mke2fs reads it); otherwise from the
    source as it is.  ``size`` None estimates it.  Needs root (mounts the image once).
    """
    opt = OPTION_SETS[option_set] if isinstance(option_set, str) else option_set
    dest = Path(dest)
    if opt.base is not None:
        build_ext(src, dest, opt.base, manifest=manifest, size=size, exact=exact)
        run_post(dest, opt)
        return dest
    if manifest is not None:
        times = {
            rel: (made.atime_ns, made.mtime_ns)
            for rel, made in manifest.made.items()
            if made.atime_ns is not None and made.mtime_ns is not None
        }
        restore_times(manifest)
    else:
        times = source_times(src)
    root_st = os.lstat(src)
    root = (root_st.st_mode, root_st.st_uid, root_st.st_gid)
    guess, inodes = estimate(src, opt)
    attempt_size = size or guess
    for attempt in range(5):
        dest.unlink(missing_ok=True)
        command = opt.command(src, dest, attempt_size, inodes)
        command[command.index("-E") + 1] += f",root_owner={root[1]}:{root[2]}"
        try:
            _run(command)
            break
        except ImageBuildError as exc:
            text = str(exc)
            if (
                size is not None
                or attempt == 4
                or not ("space" in text or "allocate" in text or "too small" in text)
            ):
                raise
            attempt_size = attempt_size * 3 // 2 // MiB * MiB
    run_post(dest, opt)
    if exact:
        _fix_up(dest, opt, times, root)
    return dest


def run_post(image: Path, option_set: OptionSet) -> None:
    """The option set's post steps on ``image``."""
    for step in option_set.post:
        # e2fsck exits 1 when it changed something (as -D does).
        _run([os.fspath(image) if arg == "{image}" else arg for arg in step], ok=(0, 1))


def copy_image(src: Path, dest: Path) -> None:
    """Copy an image keeping its holes."""
    _run(["cp", "--sparse=always", os.fspath(src), os.fspath(dest)])


def restore_times(manifest: Manifest) -> None:
    """Set the source tree's times back to what the generator made (reading moves atimes)."""
    root = os.fsencode(manifest.root)
    order = sorted(manifest.made, key=lambda r: (-r.count(b"/") if r != b"/" else 1, r))
    for rel in order:
        made = manifest.made[rel]
        if made.atime_ns is None or made.mtime_ns is None:
            continue
        os.utime(
            root if rel == b"/" else root + rel,
            ns=(made.atime_ns, made.mtime_ns),
            follow_symlinks=False,
        )


def _cache_key(params: TreeParams, option_set: OptionSet | SquashfsOptionSet) -> str:
    """What a persistent cache entry depends on: generator and builder code, tools, inputs."""
    digest = hashlib.sha256()
    for module in (trees_module, sys.modules[__name__]):
        digest.update(Path(module.__file__ or "").read_bytes())
    version = ["mke2fs", "-V"] if isinstance(option_set, OptionSet) else ["mksquashfs", "-version"]
    result = _run(version)
    digest.update((result.stdout + result.stderr).encode())
    digest.update(repr((params, option_set)).encode())
    return digest.hexdigest()[:20]


class ImageCache:
    """Trees and images built at most once per cache: ``get("standard", "ext4")``.

    ``kernel_scan`` caches the kernel's scan of each image, the oracle of the
    differential tests (the library's and the FUSE mount's).  ``prebuild`` builds
    several images in parallel.  With ``persistent`` (a directory; the test fixture
    takes it from ``$PYFSMOUNT_TEST_CACHE``) images are also kept across sessions,
    keyed by the generator and builder source, the mke2fs version and the parameters.
    Images are read-only by convention: nothing may write to them.
    """

    def __init__(
        self, root: str | os.PathLike[str], persistent: str | os.PathLike[str] | None = None
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.persistent = Path(persistent) if persistent else None
        self._trees: dict[str, Manifest] = {}
        self._images: dict[tuple[str, str], Path] = {}
        self._scans: dict[tuple[str, str], Scan] = {}
        self._locks: dict[object, threading.Lock] = {}
        self._guard = threading.Lock()
        #: Seconds spent building, per (preset, option set) (0 when found in the cache).
        self.build_seconds: dict[tuple[str, str], float] = {}

    def _lock(self, key: object) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def tree(self, preset: str = "standard") -> Manifest:
        """The source tree of a preset of :data:`tests.support.trees.PRESETS`."""
        with self._lock(("tree", preset)):
            if preset not in self._trees:
                dest = self.root / "trees" / preset
                if dest.exists():
                    shutil.rmtree(dest)
                dest.parent.mkdir(exist_ok=True)
                self._trees[preset] = build_tree(dest, PRESETS[preset])
            return self._trees[preset]

    def get(self, preset: str, option_set: str) -> Path:
        """The image of tree ``preset`` made with ``option_set``."""
        key = (preset, option_set)
        with self._lock(key):
            if key in self._images:
                return self._images[key]
            started = time.monotonic()
            opt = option_set_of(option_set)
            dest = self.root / "images" / f"{preset}-{option_set}.img"
            dest.parent.mkdir(exist_ok=True)
            stored = None
            if self.persistent is not None:
                tag = _cache_key(PRESETS[preset], opt)
                stored = self.persistent / f"{preset}-{option_set}-{tag}.img"
            if stored is not None and stored.exists():
                dest = stored
            elif isinstance(opt, SquashfsOptionSet):
                manifest = self.tree(preset)
                build_squashfs(manifest.root, dest, opt, manifest=manifest)
            elif opt.base is not None:
                copy_image(self.get(preset, opt.base), dest)
                run_post(dest, opt)
            else:
                manifest = self.tree(preset)
                build_ext(manifest.root, dest, opt, manifest=manifest)
            if stored is not None and dest != stored:
                stored.parent.mkdir(parents=True, exist_ok=True)
                copy_image(dest, stored)
            self.build_seconds[key] = time.monotonic() - started
            self._images[key] = dest
            return dest

    def prebuild(self, pairs: Iterable[tuple[str, str]], workers: int | None = None) -> None:
        """Build several images at once (mke2fs is single-threaded): the images other
        option sets start from first, then the rest."""
        pairs = list(pairs)
        bases = {(p, getattr(option_set_of(o), "base", None) or o) for p, o in pairs}
        with ThreadPoolExecutor(workers or os.cpu_count() or 2) as pool:
            for phase in (sorted(bases), pairs):
                for future in [pool.submit(self.get, *pair) for pair in phase]:
                    future.result()

    def kernel_scan(self, preset: str, option_set: str) -> Scan:
        """The kernel's view of the image (mounted read-only), scanned once.

        For an image the kernel cannot mount (squashfs with legacy lzma), the view of
        the same tree made with the set's ``oracle`` instead.
        """
        oracle = getattr(option_set_of(option_set), "oracle", None)
        if oracle is not None:
            return self.kernel_scan(preset, oracle)
        key = (preset, option_set)
        image = self.get(preset, option_set)
        with self._lock(("scan", *key)):
            if key not in self._scans:
                with kernel_mount(image, option_set_of(option_set).fstype) as mounted:
                    self._scans[key] = scan_path(mounted)
            return self._scans[key]
