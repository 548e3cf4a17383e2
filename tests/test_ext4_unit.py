"""The ext4 driver against the kernel: the same images, through the library and a loop mount.

Each variant builds a small tree, makes an image of it with mke2fs -d in one option set,
indexes its directories with e2fsck -D, and compares every entry the library shows with
what the kernel's read-only loop mount of the same image shows: names, inode numbers,
modes, owners, sizes, link counts, device numbers, st_blocks, times in ns, contents,
symlink targets, xattrs (ACLs included) and statfs.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import drivers
from drivers.base import Volume
from drivers.ext4 import Ext4Volume
from drivers.ext4.inode import EXT4_HUGE_FILE_FL, EXT4_INDEX_FL
from drivers.ext4.volume import Ext4Volume as _Impl
from tests.test_ext4_unit_helpers import (
    can_mount,
    compare_tree,
    debugfs,
    fsck_rehash,
    grow_inline_dir,
    kernel_mount,
    make_tree,
    mkfs,
    path_ino,
    read_all,
)

pytestmark = pytest.mark.skipif(not can_mount(), reason="needs root, e2fsprogs and loop devices")


def volume_impl(volume: Volume) -> _Impl:
    assert isinstance(volume, _Impl)
    return volume


def patch_huge_file(image: Path) -> None:
    """Mark multi.bin EXT4_HUGE_FILE_FL with i_blocks in fs blocks, as a huge file has."""
    volume = volume_impl(drivers.open_image(image))
    inode = volume._inode(path_ino(volume, "multi.bin"))
    per_block = volume.sb.block_size // 512
    debugfs(
        image,
        f"sif /multi.bin flags 0x{inode.flags | EXT4_HUGE_FILE_FL:x}",
        f"sif /multi.bin blocks {inode.blocks // per_block}",
        write=True,
    )


def patch_dir_nlink(image: Path) -> None:
    """A directory whose link count overflowed shows i_links_count 1 (dir_nlink)."""
    debugfs(image, "sif /dir links_count 1", write=True)


def patch_times(image: Path) -> None:
    """Timestamps mke2fs cannot make: epoch bits, pre-1970 with epoch, nsec overflow."""
    debugfs(
        image,
        "sif /times/t0 mtime_extra 0x1",
        f"sif /times/t1 mtime_extra 0x{(999_999_999 << 2) | 2:x}",
        "sif /times/t2 atime @-1000000000",
        "sif /times/t2 mtime @4000000000",
        "sif /times/t3 ctime_extra 0xfffffffe",
        "sif /times/t4 atime_extra 0x3",
        "sif /times/t4 atime 0x80000000",
        write=True,
    )


def set_unsigned_hash(image: Path) -> None:
    debugfs(image, "ssv flags 2", write=True)  # EXT2_FLAGS_UNSIGNED_HASH only


@dataclass(frozen=True)
class Variant:
    options: tuple[str, ...]
    tree: dict[str, object] = field(default_factory=dict)
    size: str = "24M"
    before_fsck: Callable[[Path], None] | None = None
    patches: tuple[Callable[[Path], None], ...] = ()


VARIANTS: dict[str, Variant] = {
    "ext2-1k": Variant(("-t", "ext2", "-b", "1024"), {"huge_sparse": True, "sparse_extents": 300}),
    "ext3": Variant(("-t", "ext3"), {"big_dir": 3000}),
    "ext4-1k": Variant(
        ("-t", "ext4", "-b", "1024"),
        {"sparse_extents": 400, "big_dir": 3000, "high_names": True},
        patches=(patch_huge_file, patch_dir_nlink, patch_times),
    ),
    "ext4-4k": Variant(("-t", "ext4", "-b", "4096"), {"sparse_extents": 100}),
    "ext4-2k-unsigned-hash": Variant(
        ("-t", "ext4", "-b", "2048"),
        {"high_names": True, "big_dir": 600},
        before_fsck=set_unsigned_hash,
    ),
    "inline_data": Variant(("-t", "ext4", "-O", "inline_data"), patches=(grow_inline_dir,)),
    "inline_data-4k": Variant(
        ("-t", "ext4", "-b", "4096", "-I", "1024", "-O", "inline_data"),
        patches=(grow_inline_dir,),
    ),
    "inode128": Variant(("-t", "ext4", "-I", "128")),
    "bigalloc": Variant(("-t", "ext4", "-O", "bigalloc", "-C", "16384")),
    "meta_bg": Variant(("-t", "ext4", "-O", "meta_bg,^resize_inode")),
    "no-journal": Variant(("-t", "ext4", "-O", "^has_journal")),
    "64bit-csum-4k": Variant(
        ("-t", "ext4", "-b", "4096", "-O", "64bit,metadata_csum"), patches=(patch_times,)
    ),
    "gdt_csum-32bit": Variant(("-t", "ext4", "-O", "^metadata_csum,^64bit,uninit_bg")),
    "ea_inode": Variant(("-t", "ext4", "-O", "ea_inode"), {"big_xattr": 3000}),
    "sparse_super2": Variant(("-t", "ext3", "-b", "4096", "-O", "sparse_super2")),
}


def build(tmp_path: Path, variant: Variant) -> Path:
    make_tree(tmp_path / "src", **variant.tree)  # type: ignore[arg-type]
    image = mkfs(tmp_path / "image", tmp_path / "src", *variant.options, size=variant.size)
    if variant.before_fsck:
        variant.before_fsck(image)
    fsck_rehash(image)
    for patch in variant.patches:
        patch(image)
    return image


@pytest.mark.parametrize("name", list(VARIANTS))
def test_matches_kernel(tmp_path: Path, name: str) -> None:
    variant = VARIANTS[name]
    image = build(tmp_path, variant)
    volume = drivers.open_image(image)
    assert isinstance(volume, Ext4Volume)
    with kernel_mount(image) as mnt:
        assert compare_tree(volume, mnt) > 200
        sv = os.statvfs(mnt)
        fs = volume.statfs()
        assert (fs.block_size, fs.blocks, fs.blocks_free, fs.blocks_available) == (
            sv.f_bsize,
            sv.f_blocks,
            sv.f_bfree,
            sv.f_bavail,
        )
        assert (fs.files, fs.files_free, fs.name_max) == (sv.f_files, sv.f_ffree, sv.f_namemax)
        check_variant_specifics(name, volume_impl(volume), mnt)


def check_variant_specifics(name: str, volume: _Impl, mnt: Path) -> None:
    """Make sure each variant exercised what it is there for."""
    sb = volume.sb
    bigdir = volume._inode(path_ino(volume, "bigdir"))
    if name in ("ext3", "ext4-1k", "ext4-2k-unsigned-hash"):
        assert bigdir.flags & EXT4_INDEX_FL
        levels = debugfs_levels(volume, "bigdir")
        directory = volume._directory(bigdir)
        for entry in volume.readdir(bigdir.ino):  # every name through the hash index
            assert directory._dx_lookup(entry.name) == entry.ino
        assert directory._dx_lookup(b"no such name") is None
        if name != "ext4-2k-unsigned-hash":
            assert levels == 1, "wanted a two-level htree"
    if name == "ext4-2k-unsigned-hash":
        assert sb.hash_unsigned == 3
    if name == "ext2-1k":
        assert not sb.has_incompat(0x40)
        huge = volume.getattr(path_ino(volume, "huge-sparse.bin"))
        assert volume.read(huge.ino, 70_000_000 - 3, 100) == b"\0\0\0triple indirect"
        with open(mnt / "huge-sparse.bin", "rb") as f:
            f.seek(69_000_000)
            assert volume.read(huge.ino, 69_000_000, 1_000_100) == f.read(1_000_100)
    if name == "ext4-1k":
        frag = volume._inode(path_ino(volume, "fragmented.bin"))
        assert int.from_bytes(frag.i_block[6:8], "little") == 2, "wanted a depth-2 extent tree"
        multi = volume._inode(path_ino(volume, "multi.bin"))
        assert multi.flags & EXT4_HUGE_FILE_FL
        assert volume.getattr(path_ino(volume, "dir")).nlink == 1
    if name in ("ext4-1k", "64bit-csum-4k"):
        assert volume.getattr(path_ino(volume, "times/t2")).mtime_ns == 4_000_000_000 * 10**9
        assert volume.getattr(path_ino(volume, "times/t3")).ctime_ns % 10**9 == 73_741_823
    if name.startswith("inline_data"):
        inline = [e.name for e in volume.readdir(volume.root_ino) if volume._inode(e.ino).inline]
        assert b"small.txt" in inline and b"fast-link" not in inline
        assert volume._inode(path_ino(volume, "dir/sub")).inline  # an inline directory
        few = volume._inode(path_ino(volume, "grown"))
        assert few.inline and few.inline_tail, "wanted entries in the system.data part"
        assert len(list(volume.readdir(few.ino))) == 4
    if name == "inline_data-4k":  # 1 KiB inodes: room for an inline slow symlink
        assert volume._inode(path_ino(volume, "slow-link")).inline
    if name == "ea_inode":
        fifty = path_ino(volume, "fifty.bin")
        assert volume.getxattr(fifty, b"user.big") == b"v" * 3000
    if name == "bigalloc":
        assert sb.cluster_ratio == 16
    if name == "inode128":
        assert sb.inode_size == 128


def debugfs_levels(volume: _Impl, path: str) -> int:
    """indirect_levels of the directory's htree root."""
    return volume._directory(volume._inode(path_ino(volume, path)))._dx_node(0, True).dx_info[1]


def test_readdir_resumes_after_each_entry(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", big_dir=300)
    for options in (("-t", "ext4", "-b", "1024"), ("-t", "ext4", "-O", "inline_data")):
        image = mkfs(tmp_path / "image", tmp_path / "src", *options)
        fsck_rehash(image)
        grow_inline_dir(image)
        volume = drivers.open_image(image)
        for path in ("bigdir", "dir", "dir/sub", "", "grown"):
            ino = path_ino(volume, path) if path else volume.root_ino
            entries = list(volume.readdir(ino))
            assert entries, path
            offsets = [e.next_offset for e in entries]
            assert len(set(offsets)) == len(offsets) and all(o > 0 for o in offsets)
            for k in range(0, len(entries), max(1, len(entries) // 25)):
                assert list(volume.readdir(ino, entries[k].next_offset)) == entries[k + 1 :]
            assert list(volume.readdir(ino, 0)) == entries
            assert b"." not in {e.name for e in entries} and b".." not in {e.name for e in entries}


def test_lookup_dot_and_dotdot(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", big_dir=300)
    for options in (("-t", "ext4", "-b", "1024"), ("-t", "ext4", "-O", "inline_data")):
        image = mkfs(tmp_path / "image", tmp_path / "src", *options)
        fsck_rehash(image)
        volume = drivers.open_image(image)
        for parent_path, child_path in (("", "bigdir"), ("dir", "dir/sub"), ("", "dir")):
            parent = path_ino(volume, parent_path) if parent_path else volume.root_ino
            child = path_ino(volume, child_path)
            assert volume.lookup(child, b".") == child
            assert volume.lookup(child, b"..") == parent
        assert volume.lookup(volume.root_ino, b"..") == volume.root_ino


def test_reads_match_kernel_at_odd_offsets(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", sparse_extents=50)
    image = mkfs(tmp_path / "image", tmp_path / "src", "-t", "ext4", "-b", "1024")
    volume = drivers.open_image(image)
    with kernel_mount(image) as mnt:
        for name in ("sparse.bin", "multi.bin", "fragmented.bin", "small.txt", "empty"):
            ino = path_ino(volume, name)
            size = volume.getattr(ino).size
            fd = os.open(mnt / name, os.O_RDONLY)
            try:
                for offset in (0, 1, 1023, 1024, 4095, 99_999, size - 1, size, size + 10):
                    for length in (1, 7, 1024, 5000, 131072):
                        if offset < 0:
                            continue
                        want = os.pread(fd, length, offset)
                        assert volume.read(ino, offset, length) == want, (name, offset, length)
            finally:
                os.close(fd)


def test_uninitialized_extents_read_as_zeros(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "data").write_bytes(b"x" * 8192)
    image = mkfs(tmp_path / "image", tmp_path / "src", "-t", "ext4", "-b", "4096")
    debugfs(image, "write /dev/null prealloc", "fallocate /prealloc 0 9", write=True)
    debugfs(image, "sif /prealloc size 40960", write=True)
    volume = drivers.open_image(image)
    ino = path_ino(volume, "prealloc")
    out = debugfs(image, "stat /prealloc")
    assert "Uninit" in out or "[u]" in out or "uninit" in out.lower(), out
    with kernel_mount(image) as mnt:
        assert volume.read(ino, 0, 1 << 20) == (mnt / "prealloc").read_bytes() == bytes(40960)
        assert volume.getattr(ino).blocks == os.lstat(mnt / "prealloc").st_blocks


def test_64k_blocks_against_the_source_tree(tmp_path: Path) -> None:
    """The kernel here cannot mount 64 KiB blocks (page size 4 KiB): compare with the source."""
    src = tmp_path / "src"
    make_tree(src, big_dir=100, sparse_extents=20)
    image = mkfs(tmp_path / "image", src, "-t", "ext4", "-b", "65536", size="128M")
    fsck_rehash(image)
    volume = drivers.open_image(image)
    assert volume.statfs().block_size == 65536
    compared = 0
    stack = [(volume.root_ino, src)]
    while stack:
        ino, path = stack.pop()
        names = {e.name: e.ino for e in volume.readdir(ino)}
        expected = {os.fsencode(n) for n in os.listdir(path)}
        if path == src:
            expected.add(b"lost+found")
            names.pop(b"lost+found")
            expected.discard(b"lost+found")
        assert set(names) == expected, path
        for name, child_ino in names.items():
            child = path / os.fsdecode(name)
            st = os.lstat(child)
            attr = volume.getattr(child_ino)
            assert (attr.mode, attr.uid, attr.gid, attr.rdev) == (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_rdev,
            ), child
            # mke2fs 1.47.0 copies whole seconds, and only 32 bits of them
            if -(2**31) <= st.st_mtime_ns // 10**9 < 2**31:
                assert attr.mtime_ns // 10**9 == st.st_mtime_ns // 10**9, child
            if stat.S_ISDIR(st.st_mode):
                stack.append((child_ino, child))
                continue
            assert attr.size == st.st_size, child
            if stat.S_ISLNK(st.st_mode):
                assert volume.readlink(child_ino) == os.fsencode(os.readlink(child))
            elif stat.S_ISREG(st.st_mode):
                assert read_all(volume, child_ino, attr.size) == child.read_bytes()
            want = {
                n.encode(): os.getxattr(child, n, follow_symlinks=False)
                for n in os.listxattr(child, follow_symlinks=False)
            }
            assert {n: volume.getxattr(child_ino, n) for n in volume.listxattr(child_ino)} == want
            compared += 1
    assert compared > 100


def test_noload_mounts_a_journal_needing_recovery(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", big_dir=10)
    image = mkfs(tmp_path / "image", tmp_path / "src", "-t", "ext4")
    debugfs(image, "feature needs_recovery", write=True)
    with pytest.raises(drivers.Unsupported, match="noload"):
        drivers.open_image(image)
    volume = drivers.open_image(image, options={"noload": ""})
    with pytest.raises(AssertionError, match="noload"), kernel_mount(image):
        pass  # the kernel refuses too, and says the same
    with kernel_mount(image, "noload") as mnt:
        compare_tree(volume, mnt)
        assert volume.statfs().blocks == os.statvfs(mnt).f_blocks
