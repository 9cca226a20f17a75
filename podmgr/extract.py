"""Streaming tar parsing, ACI layout checks and safe extraction.

The parser is our own rather than ``tarfile``: it lets one pass over the decompressed
stream feed the image-ID hash (every byte, end-of-archive padding included), and it
refuses the ambiguous inputs on which tar readers disagree (a hard link that carries
data, a bad checksum, sparse files), so that what ``actool validate`` checked is what we
extract. It is also about twice as fast as ``tarfile`` on images of many small files.

Extraction never follows a symlink: every directory is opened relative to its parent
with ``O_NOFOLLOW | O_DIRECTORY``, every node is created with ``O_EXCL`` semantics, and
an entry whose parent is not a directory the archive itself created is refused.

Everything is bounded (issue 18; docs/exit-codes.md): path depth and length, names,
link targets, extended headers and entries are refused beyond fixed limits (exit 4);
the uncompressed stream and the free space it leaves are checked against the
configurable :class:`ImportLimits` through a :class:`Budget` (exit 10). Nothing walks a
path recursively per level: directories are opened level by level in a loop.

Decisions, from aci.md ("All files in the image MUST maintain all of their original
properties, including timestamps, Unix modes, and extended attributes") and ace.md:

- Running as root, everything is kept: numeric owners, setuid/setgid bits (ace.md only
  says they are ignored when an app runs with ``no_new_privs``, so an image may rely on
  them), ``security.capability``, and device nodes (the executor gives each app its own
  /dev and a device cgroup policy; a node in the rootfs grants nothing by itself).
- Not root (tests, ``image extract`` by a user): owners cannot be set, so setuid/setgid
  bits are dropped (a setuid file owned by the wrong user would be a new privilege),
  device nodes are skipped, and xattrs the kernel refuses to a user (``security.*``,
  ``trusted.*``) are skipped; each skip is logged.
"""

from __future__ import annotations

import collections
import errno
import os
import stat
from collections.abc import Callable
from typing import Final

from podmgr import logger
from podmgr.errors import InvalidError, LimitError, PodmgrError, UsageError

log = logger.get(__name__)

BLOCK: Final = 512
#: Read size from the decompressor: big enough that per-call overhead vanishes.
CHUNK: Final = 1 << 20
#: The largest manifest accepted; refused from the header, before reading it.
MAX_MANIFEST_SIZE: Final = 1 << 20
#: PAX extended headers and GNU long names are held in memory, so they are capped.
MAX_META_SIZE: Final = 8 << 20
#: The deepest path accepted in an image's rootfs, in components (``/a/b`` is 2).
#: Linux resolves at most PATH_MAX (4096) bytes in one path, which an app could not
#: open anyway; real images stay far below (Debian's deepest is about 20). Refused as
#: an invalid archive (exit 4) before anything deeper is created.
MAX_PATH_DEPTH: Final = 256
#: PATH_MAX without its NUL: the longest path (and symlink target) accepted.
MAX_PATH_BYTES: Final = 4095
#: NAME_MAX: the longest file name (one component) accepted.
MAX_NAME_BYTES: Final = 255
#: The most entries one archive may have: every path is held in memory while it is
#: checked (about 200 bytes each), so this bounds that memory to some 400 MiB. Large
#: real images have a few hundred thousand.
MAX_ENTRIES: Final = 1 << 21

_ZERO_BLOCK: Final = bytes(BLOCK)
_META_TYPES: Final = frozenset(b"xgLK")
_REG_TYPES: Final = frozenset(b"0\x007")
#: Types that carry no data. Readers disagree on whether their size field counts
#: (tarfile skips data after a hard link, Go's archive/tar does not), so a non-zero
#: size on them is refused rather than guessed.
_HEADER_ONLY: Final = frozenset(b"123456")
_TYPE_NAMES: Final = {
    ord("1"): "hard link",
    ord("2"): "symlink",
    ord("3"): "character device",
    ord("4"): "block device",
    ord("5"): "directory",
    ord("6"): "fifo",
}
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Directory fds kept open; tar streams are grouped by directory, so a small cache
#: makes nearly every lookup a hit without risking the fd limit.
_DIR_CACHE_SIZE: Final = 64


#: Import limits (docs/exit-codes.md, "Import limits"): environment variables, defaults.
MAX_IMAGE_ENV: Final = "PODMGR_MAX_IMAGE_SIZE"
MAX_ARCHIVE_ENV: Final = "PODMGR_MAX_ARCHIVE_SIZE"
RESERVE_ENV: Final = "PODMGR_STORE_RESERVE"
DEFAULT_MAX_IMAGE: Final = 8 << 30
DEFAULT_MAX_ARCHIVE: Final = 4 << 30
DEFAULT_RESERVE: Final = "5%"
#: The free space is looked at again after this many more uncompressed bytes.
SPACE_CHECK_EVERY: Final = 64 << 20
_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, what: str) -> int:
    """Bytes of a size written ``123``, ``512M``, ``8G`` (powers of 1024; ``KiB`` too)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _UNITS else ""
    digits = t[: len(t) - len(unit)]
    if not digits.isdigit() or not digits.isascii() or len(digits) > 20:
        raise UsageError(
            f"{what}={text!r} is not a size", hint="write a number of bytes, e.g. 512M or 8G"
        )
    return int(digits) * _UNITS[unit]


def format_size(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            if n % _UNITS[unit] == 0:
                return f"{n // _UNITS[unit]}{unit}"
            return f"{n / _UNITS[unit]:.1f}{unit}"
    return f"{n} bytes"


class ImportLimits:
    """What one import may write; 0 disables a cap. See docs/exit-codes.md."""

    __slots__ = ("max_archive", "max_image", "reserve", "reserve_fraction")

    def __init__(
        self,
        max_image: int = DEFAULT_MAX_IMAGE,
        max_archive: int = DEFAULT_MAX_ARCHIVE,
        reserve: str = DEFAULT_RESERVE,
    ) -> None:
        self.max_image = max_image
        self.max_archive = max_archive
        #: A share of the filesystem (bytes and inodes) or, if None, ``reserve`` bytes.
        self.reserve_fraction: float | None = None
        self.reserve = 0
        text = reserve.strip()
        if text.endswith("%"):
            try:
                pct = float(text[:-1])
            except ValueError:
                pct = -1.0
            if not 0 <= pct < 100:
                raise UsageError(
                    f"{RESERVE_ENV}={reserve!r} is not a percentage from 0 to 99",
                    hint="write e.g. 5% or a size such as 2G",
                )
            self.reserve_fraction = pct / 100
        else:
            self.reserve = parse_size(text, RESERVE_ENV)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ImportLimits:
        env = dict(os.environ) if env is None else env
        return cls(
            parse_size(env[MAX_IMAGE_ENV], MAX_IMAGE_ENV)
            if env.get(MAX_IMAGE_ENV)
            else DEFAULT_MAX_IMAGE,
            parse_size(env[MAX_ARCHIVE_ENV], MAX_ARCHIVE_ENV)
            if env.get(MAX_ARCHIVE_ENV)
            else DEFAULT_MAX_ARCHIVE,
            env.get(RESERVE_ENV) or DEFAULT_RESERVE,
        )

    def check_archive(self, size: int) -> None:
        """Refuse an archive (as stored, compressed) of ``size`` bytes or more so far."""
        if self.max_archive and size > self.max_archive:
            raise LimitError(
                f"image archive is larger than {format_size(self.max_archive)}, "
                f"the limit for one image",
                hint=f"if the image is trusted, raise the limit with {MAX_ARCHIVE_ENV}",
            )

    def check_image(self, size: int) -> None:
        """Refuse an uncompressed tar stream of more than ``size`` bytes."""
        if self.max_image and size > self.max_image:
            raise LimitError(
                f"image is larger than {format_size(self.max_image)} uncompressed, the limit "
                "for one image (a decompression bomb, or a very large image)",
                hint=f"if the image is trusted, raise the limit with {MAX_IMAGE_ENV}",
            )

    def check_space(self, path: str | os.PathLike[str], need: int = 0) -> None:
        """Refuse if the filesystem of ``path``, after ``need`` more bytes, would have
        less free space (or, for a percentage, fewer free inodes) than the reserve."""
        if not self.reserve and not self.reserve_fraction:
            return
        st = os.statvfs(path)
        free = st.f_bavail * st.f_frsize
        if self.reserve_fraction is not None:
            reserve = int(st.f_blocks * st.f_frsize * self.reserve_fraction)
            low_inodes = st.f_files > 0 and st.f_favail < st.f_files * self.reserve_fraction
        else:
            reserve, low_inodes = self.reserve, False
        if free - need < reserve or low_inodes:
            what = "inodes" if low_inodes and free - need >= reserve else "space"
            if self.reserve_fraction is not None:
                kept = f"{self.reserve_fraction:.0%} of it"
            else:
                kept = format_size(reserve)
            raise LimitError(
                f"not enough free {what} for the image on the image store's filesystem "
                f"({format_size(free)} free, the reserve is {kept})",
                hint=f"free space (podmgr image gc), or lower the reserve with {RESERVE_ENV}",
            )


class Budget:
    """The limits applied while one archive streams through a :class:`TarReader`."""

    __slots__ = ("_next", "_path", "limits")

    def __init__(self, limits: ImportLimits, space_path: str | os.PathLike[str] | None) -> None:
        self.limits = limits
        self._path = space_path
        self._next = 0

    def charge(self, total: int) -> None:
        """``total`` uncompressed bytes have been read."""
        self.limits.check_image(total)
        if self._path is not None and total >= self._next:
            self._next = total + SPACE_CHECK_EVERY
            self.limits.check_space(self._path)


def _invalid(message: str) -> InvalidError:
    return InvalidError(message, hint="the image archive is malformed or unsafe; do not use it")


class TarEntry:
    """One member of a tar stream, after PAX and GNU long-name headers are applied."""

    __slots__ = (
        "devmajor",
        "devminor",
        "gid",
        "linkname",
        "mode",
        "mtime_ns",
        "name",
        "offset",
        "size",
        "type",
        "uid",
        "xattrs",
    )

    def __init__(self) -> None:
        self.name = ""
        self.linkname = ""
        self.type = 0
        self.size = 0
        self.mode = 0
        self.uid = 0
        self.gid = 0
        self.mtime_ns = 0
        self.devmajor = 0
        self.devminor = 0
        self.offset = 0
        self.xattrs: dict[str, bytes] = {}

    @property
    def is_file(self) -> bool:
        return self.type in _REG_TYPES

    @property
    def is_dir(self) -> bool:
        return self.type == ord("5")


def _num(field: bytes, what: str, offset: int) -> int:
    if field and field[0] & 0x80:
        if field[0] != 0x80:
            raise _invalid(f"negative {what} in tar header at offset {offset}")
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise _invalid(f"bad {what} field in tar header at offset {offset}") from None


def _signed_sum(hdr: bytes) -> int:
    # Some old tars summed signed chars; accepted like GNU tar does.
    return sum(b - 256 if b > 127 else b for b in hdr[:148] + b" " * 8 + hdr[156:])


def _text(value: bytes) -> str:
    # Names are bytes on Linux; surrogateescape round-trips any of them through os.*.
    return value.decode("utf-8", "surrogateescape")


def _mtime_ns(value: bytes, offset: int) -> int:
    text = value.decode("ascii", "replace")
    sign = -1 if text.startswith("-") else 1
    sec, _, frac = text.lstrip("-").partition(".")
    if not sec.isdigit() or (frac and not frac.isdigit()):
        raise _invalid(f"bad PAX mtime {text!r} at offset {offset}")
    return sign * (int(sec) * 1_000_000_000 + int((frac + "000000000")[:9]))


def parse_pax(data: bytes, offset: int) -> dict[str, bytes | None]:
    """Parse PAX records (``"%d %s=%s\\n"``); an empty value (None) deletes a key."""
    out: dict[str, bytes | None] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        sp = data.find(b" ", pos, pos + 20)
        try:
            length = int(data[pos:sp]) if sp > pos else 0
        except ValueError:
            length = 0
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1] != 0x0A:
            raise _invalid(f"bad PAX record in tar header at offset {offset}")
        key, eq, value = data[sp + 1 : end - 1].partition(b"=")
        if not eq:
            raise _invalid(f"bad PAX record in tar header at offset {offset}")
        out[_text(key)] = value or None
        pos = end
    return out


class TarReader:
    """Pull-parser over a tar byte stream; every byte read goes through ``on_chunk``."""

    def __init__(
        self,
        read: Callable[[int], bytes],
        on_chunk: Callable[[bytes], object] | None = None,
        budget: Budget | None = None,
    ) -> None:
        self._read = read
        self._on_chunk = on_chunk
        self._budget = budget
        self._buf = b""
        self._pos = 0
        #: Uncompressed bytes read so far (the whole stream once ``drain`` returned).
        self.total = 0
        self._pending = 0  # data bytes of the current entry not consumed yet
        self._global: dict[str, bytes | None] = {}
        self._global_size = 0

    def _fill(self) -> bool:
        chunk = self._read(CHUNK)
        if not chunk:
            return False
        if self._on_chunk is not None:
            self._on_chunk(chunk)
        self.total += len(chunk)
        if self._budget is not None:
            self._budget.charge(self.total)
        self._buf = self._buf[self._pos :] + chunk if self._pos < len(self._buf) else chunk
        self._pos = 0
        return True

    @property
    def offset(self) -> int:
        """Offset in the uncompressed stream of the next unread byte."""
        return self.total - (len(self._buf) - self._pos)

    def _take(self, n: int) -> bytes:
        while len(self._buf) - self._pos < n:
            if not self._fill():
                raise _invalid(f"truncated tar stream: it ends at offset {self.offset}")
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def _skip(self, n: int) -> None:
        while n:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._fill():
                    raise _invalid(f"truncated tar stream: it ends at offset {self.offset}")
                continue
            k = min(avail, n)
            self._pos += k
            n -= k

    def _end_data(self) -> None:
        self._skip(self._pending + (-self._pending % BLOCK))
        self._pending = 0

    def data(self) -> bytes:
        """The current entry's data (only for small entries: the manifest)."""
        n, self._pending = self._pending, 0
        out = self._take(n)
        self._skip(-n % BLOCK)
        return out

    def copy_data(self, fd: int) -> None:
        """Write the current entry's data to ``fd``."""
        n, self._pending = self._pending, 0
        pad = -n % BLOCK
        while n:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._fill():
                    raise _invalid(f"truncated tar stream: it ends at offset {self.offset}")
                continue
            k = min(avail, n)
            view = memoryview(self._buf)[self._pos : self._pos + k]
            while view:
                view = view[os.write(fd, view) :]
            self._pos += k
            n -= k
        self._skip(pad)

    def _meta(self, size: int, offset: int) -> bytes:
        if size > MAX_META_SIZE:
            raise _invalid(f"tar extended header at offset {offset} is too large ({size} bytes)")
        data = self._take(size)
        self._skip(-size % BLOCK)
        return data

    def next(self) -> TarEntry | None:
        """The next entry, or None at the end-of-archive marker."""
        self._end_data()
        pax: dict[str, bytes | None] = {}
        longname: str | None = None
        longlink: str | None = None
        meta_size = 0
        while True:
            offset = self.offset
            while len(self._buf) - self._pos < BLOCK:
                if not self._fill():
                    if self._pos == len(self._buf):
                        raise _invalid(
                            f"truncated tar stream: no end-of-archive marker at offset {offset}"
                        )
                    raise _invalid(f"truncated tar stream: it ends at offset {self.offset}")
            hdr = self._take(BLOCK)
            if hdr == _ZERO_BLOCK:
                if pax or longname is not None or longlink is not None:
                    raise _invalid(f"tar extended header without an entry at offset {offset}")
                return None
            stored = _num(hdr[148:156], "checksum", offset)
            unsigned = sum(hdr) - sum(hdr[148:156]) + 8 * 32
            if stored != unsigned and stored != _signed_sum(hdr):
                raise _invalid(f"bad tar header checksum at offset {offset}")
            typ = hdr[156]
            size = _num(hdr[124:136], "size", offset)
            if typ in _META_TYPES:
                # Held in memory until their entry (or, global ones, for good): bounded
                # in total, not only each, or a chain of them would grow without end.
                held = self._global_size if typ == ord("g") else meta_size
                if held + size > MAX_META_SIZE:
                    raise _invalid(
                        f"tar extended headers at offset {offset} add up to more than "
                        f"{MAX_META_SIZE} bytes"
                    )
                if typ == ord("g"):
                    self._global_size += size
                else:
                    meta_size += size
            if typ == ord("x"):
                pax.update(parse_pax(self._meta(size, offset), offset))
                continue
            if typ == ord("g"):
                self._global.update(parse_pax(self._meta(size, offset), offset))
                continue
            if typ == ord("L"):
                longname = _text(self._meta(size, offset).split(b"\0", 1)[0])
                continue
            if typ == ord("K"):
                longlink = _text(self._meta(size, offset).split(b"\0", 1)[0])
                continue
            break

        e = TarEntry()
        e.offset = offset
        e.type = typ
        name = hdr[0:100].split(b"\0", 1)[0]
        if hdr[257:263] == b"ustar\x00" and hdr[345] != 0:
            name = hdr[345:500].split(b"\0", 1)[0] + b"/" + name
        e.name = longname if longname is not None else _text(name)
        e.linkname = longlink if longlink is not None else _text(hdr[157:257].split(b"\0", 1)[0])
        e.mode = _num(hdr[100:108], "mode", offset) & 0o7777
        e.uid = _num(hdr[108:116], "uid", offset)
        e.gid = _num(hdr[116:124], "gid", offset)
        e.size = size
        e.mtime_ns = _num(hdr[136:148], "mtime", offset) * 1_000_000_000
        if typ in (ord("3"), ord("4")):
            e.devmajor = _num(hdr[329:337], "devmajor", offset)
            e.devminor = _num(hdr[337:345], "devminor", offset)
        records = {**self._global, **pax} if self._global else pax
        for key, value in records.items():
            if value is None:
                continue
            if key.startswith("SCHILY.xattr."):
                e.xattrs[key[13:]] = value
            elif key == "path":
                e.name = _text(value)
            elif key == "linkpath":
                e.linkname = _text(value)
            elif key in ("size", "uid", "gid"):
                if not value.isdigit():
                    raise _invalid(f"bad PAX {key} at offset {offset}")
                setattr(e, key, int(value))
            elif key == "mtime":
                e.mtime_ns = _mtime_ns(value, offset)
            elif key.startswith("GNU.sparse."):
                raise _invalid(f"sparse file {e.name!r} at offset {offset} is not supported")
        if typ == ord("0") or typ == 0:
            if e.name.endswith("/") and typ == 0:
                e.type = ord("5")  # pre-POSIX tars mark directories with a trailing slash
        elif typ not in _REG_TYPES and typ not in _HEADER_ONLY:
            raise _invalid(
                f"unsupported tar entry type {chr(typ)!r} for {e.name!r} at offset {offset}"
            )
        if e.type in _HEADER_ONLY and e.size:
            raise _invalid(
                f"{_TYPE_NAMES[e.type]} {e.name!r} at offset {offset} claims {e.size} data bytes"
            )
        self._pending = e.size
        return e

    def drain(self) -> None:
        """Read (and hash) the rest of the stream after the end-of-archive marker."""
        self._pending = 0
        self._buf, self._pos = b"", 0
        while self._fill():
            self._buf, self._pos = b"", 0


def normalize(name: str, offset: int) -> str:
    """The canonical relative path of an archive name; refuses absolute and ``..``."""
    if name.startswith("/"):
        raise _invalid(f"absolute path {name!r} in image archive at offset {offset}")
    parts = [p for p in name.split("/") if p and p != "."]
    if ".." in parts:
        raise _invalid(f"path {name!r} in image archive escapes it with '..'")
    if "\0" in name:
        raise _invalid(f"path {name!r} in image archive contains a NUL byte")
    if not name:
        raise _invalid(f"entry with an empty name in image archive at offset {offset}")
    return "/".join(parts)


def check_bounds(path: str, linkname: str, offset: int) -> None:
    """Refuse a path deeper or longer than Linux can open in one go (see MAX_PATH_DEPTH),
    a component longer than NAME_MAX, and a symlink target longer than PATH_MAX."""
    # Once per entry: the common short path costs a count and one encode (3 ms per
    # 50,000 entries; splitting every path cost 59).
    depth = path.count("/")
    if depth > MAX_PATH_DEPTH:
        raise _invalid(
            f"path at offset {offset} in image archive nests {depth} directories "
            f"deep (the limit is {MAX_PATH_DEPTH})"
        )
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_PATH_BYTES:
        raise _invalid(
            f"path at offset {offset} in image archive is {len(raw)} bytes long "
            f"(the limit is {MAX_PATH_BYTES})"
        )
    if len(raw) > MAX_NAME_BYTES and max(map(len, raw.split(b"/"))) > MAX_NAME_BYTES:
        raise _invalid(
            f"a file name at offset {offset} in image archive is longer than {MAX_NAME_BYTES} bytes"
        )
    if len(linkname) * 4 > MAX_PATH_BYTES and (
        len(linkname.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES
    ):
        raise _invalid(
            f"link target at offset {offset} in image archive is longer than {MAX_PATH_BYTES} bytes"
        )


def _parent(path: str) -> tuple[str, str]:
    head, _, tail = path.rpartition("/")
    return head, tail


class Extractor:
    """Creates the nodes of one archive below a directory it owns, symlink-safely."""

    def __init__(self, root_fd: int, *, as_root: bool) -> None:
        self._root = root_fd
        self.as_root = as_root
        # Files are chowned only when their owner differs from the one they get anyway,
        # which a set-group-ID destination would change.
        st = os.fstat(root_fd)
        self._own = (-1, -1) if st.st_mode & stat.S_ISGID else (os.geteuid(), os.getegid())
        self._fds: collections.OrderedDict[str, int] = collections.OrderedDict()
        #: Directory metadata applied last: creating children would change the mtime,
        #: and a read-only mode would stop us (unprivileged) from creating them.
        self._dirs: dict[str, TarEntry | None] = {}

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    def _dirfd(self, path: str) -> int:
        """An open fd of the directory ``path``, opened level by level below the
        nearest cached ancestor: a loop, not a recursion, whatever the depth."""
        if not path:
            return self._root
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        missing = []
        head = path
        while head and (fd := self._fds.get(head)) is None:
            missing.append(head)
            head = head.rpartition("/")[0]
        parent = self._root if not head else fd
        assert parent is not None
        if head:
            self._fds.move_to_end(head)
        for p in reversed(missing):
            parent = os.open(_parent(p)[1], _DIR_FLAGS, dir_fd=parent)
            # Each one cached as soon as it is open (so closed by close() on error);
            # the one just cached is the newest, never the one evicted.
            self._fds[p] = parent
            if len(self._fds) > _DIR_CACHE_SIZE:
                os.close(self._fds.popitem(last=False)[1])
        return parent

    def mkdir(self, path: str, entry: TarEntry | None) -> None:
        """Create a directory (or record metadata of one created implicitly before)."""
        if path in self._dirs:
            self._dirs[path] = entry
        else:
            head, tail = _parent(path)
            os.mkdir(tail, 0o700, dir_fd=self._dirfd(head))
            self._dirs[path] = entry
        if entry is not None and entry.xattrs:
            self._xattrs(self._dirfd(path), entry)
            entry.xattrs = {}  # applied; the entry is kept until finish(), they need not be

    def _mode(self, entry: TarEntry) -> int:
        return entry.mode if self.as_root else entry.mode & 0o1777

    def _xattrs(self, target: int | str, entry: TarEntry) -> None:
        for key, value in entry.xattrs.items():
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as e:
                if not self.as_root and e.errno in (errno.EPERM, errno.EACCES):
                    log.warning("not root: skipping xattr %s on %s", key, entry.name)
                    continue
                raise PodmgrError(
                    f"cannot set xattr {key} on {entry.name}: {e.strerror}",
                    hint="the store's filesystem must support extended attributes",
                ) from None

    def file(self, path: str, entry: TarEntry, reader: TarReader) -> None:
        head, tail = _parent(path)
        fd = os.open(tail, _FILE_FLAGS, 0o600, dir_fd=self._dirfd(head))
        try:
            reader.copy_data(fd)
            # chown clears setuid bits and security.capability, so it goes first.
            if self.as_root and (entry.uid, entry.gid) != self._own:
                os.fchown(fd, entry.uid, entry.gid)
            os.fchmod(fd, self._mode(entry))
            if entry.xattrs:
                self._xattrs(fd, entry)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)

    def symlink(self, path: str, entry: TarEntry) -> None:
        head, tail = _parent(path)
        dfd = self._dirfd(head)
        os.symlink(entry.linkname, tail, dir_fd=dfd)
        if self.as_root:
            os.chown(tail, entry.uid, entry.gid, dir_fd=dfd, follow_symlinks=False)
        if entry.xattrs:
            self._xattrs(f"/proc/self/fd/{dfd}/{tail}", entry)
        os.utime(tail, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dfd, follow_symlinks=False)

    def hardlink(self, path: str, target: str) -> None:
        head, tail = _parent(path)
        thead, ttail = _parent(target)
        os.link(
            ttail,
            tail,
            src_dir_fd=self._dirfd(thead),
            dst_dir_fd=self._dirfd(head),
            follow_symlinks=False,
        )

    def node(self, path: str, entry: TarEntry) -> None:
        """A fifo or a device node."""
        kind = {ord("3"): stat.S_IFCHR, ord("4"): stat.S_IFBLK}.get(entry.type, stat.S_IFIFO)
        if kind != stat.S_IFIFO and not self.as_root:
            log.warning("not root: skipping device node %s", entry.name)
            return
        head, tail = _parent(path)
        dfd = self._dirfd(head)
        os.mknod(tail, kind | 0o600, os.makedev(entry.devmajor, entry.devminor), dir_fd=dfd)
        if self.as_root:
            os.chown(tail, entry.uid, entry.gid, dir_fd=dfd, follow_symlinks=False)
        # fchmodat cannot refuse to follow a symlink on Linux; the node was created by us
        # a moment ago in a directory only we write to, so it is not one.
        os.chmod(tail, self._mode(entry), dir_fd=dfd)
        if entry.xattrs:
            self._xattrs(f"/proc/self/fd/{dfd}/{tail}", entry)
        os.utime(tail, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dfd, follow_symlinks=False)

    def manifest(self, entry: TarEntry, data: bytes) -> None:
        fd = os.open("manifest", _FILE_FLAGS, 0o600, dir_fd=self._root)
        try:
            os.write(fd, data)
            if self.as_root:
                os.fchown(fd, entry.uid, entry.gid)
            os.fchmod(fd, entry.mode & 0o777)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)

    def finish(self) -> None:
        """Apply directory owners, modes and mtimes, deepest first."""
        for path in sorted(self._dirs, key=lambda p: p.count("/"), reverse=True):
            entry = self._dirs[path]
            fd = self._dirfd(path)
            if entry is None:
                os.fchmod(fd, 0o755)  # an implied parent, like tar creates
                continue
            if self.as_root:
                os.fchown(fd, entry.uid, entry.gid)
            os.fchmod(fd, self._mode(entry))
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))


def walk_archive(
    reader: TarReader,
    sink: Extractor | None,
    *,
    stop_at_manifest: bool = False,
) -> bytes:
    """Check every entry against the ACI layout rules, extracting into ``sink`` if given.

    Returns the manifest bytes. With ``stop_at_manifest`` it returns as soon as the
    manifest is read (entries before it are still checked); otherwise it reads through
    the end-of-archive marker.
    """
    # path -> "d" (directory entry), "i" (implied parent directory), or "f" (anything else)
    seen: dict[str, str] = {"": "i"}
    explicit_root = False
    manifest: bytes | None = None
    count = 0
    while (e := reader.next()) is not None:
        count += 1
        if count > MAX_ENTRIES:
            raise _invalid(f"image archive has more than {MAX_ENTRIES} entries")
        path = normalize(e.name, e.offset)
        check_bounds(path, e.linkname, e.offset)
        kind = "d" if e.is_dir else "f"
        prev = seen.get(path)
        if not path:
            if not e.is_dir or explicit_root:
                raise _invalid(f"bad or duplicate archive root entry {e.name!r}")
            explicit_root = True
            continue
        top = path.split("/", 1)[0]
        if path == "rootfs" and not e.is_dir:
            raise _invalid(
                f"rootfs in image archive is a {_TYPE_NAMES.get(e.type, 'regular file')}, "
                "not a directory"
            )
        if prev is not None and not (prev == "i" and kind == "d"):
            raise _invalid(f"duplicate entry {path!r} in image archive")
        if path == "manifest":
            if not e.is_file:
                raise _invalid("manifest in image archive is not a regular file")
            if e.size > MAX_MANIFEST_SIZE:
                raise _invalid(
                    f"manifest is too large ({e.size} bytes; the limit is {MAX_MANIFEST_SIZE})"
                )
            manifest = reader.data()
            seen[path] = kind
            if sink is not None:
                sink.manifest(e, manifest)
            if stop_at_manifest:
                return manifest
            continue
        if top != "rootfs":
            raise _invalid(
                f"unexpected entry {path!r} in image archive: only manifest and rootfs/ "
                "may be at the top"
            )
        # Parents must be directories of this archive; a symlink or file there is refused
        # rather than followed.
        head = path.rpartition("/")[0]
        missing = []
        while (pk := seen.get(head)) is None:
            missing.append(head)
            head = head.rpartition("/")[0]
        if pk == "f":
            raise _invalid(f"{path!r} in image archive is below {head!r}, which is not a directory")
        for d in reversed(missing):
            seen[d] = "i"
            if sink is not None:
                sink.mkdir(d, None)
        target = ""
        if e.type == ord("1"):
            target = normalize(e.linkname, e.offset)
            if not target.startswith("rootfs/"):
                raise _invalid(f"hard link {path!r} points outside rootfs: {e.linkname!r}")
            if seen.get(target) != "f":
                raise _invalid(
                    f"hard link {path!r} points to {e.linkname!r}, which is not an earlier "
                    "non-directory entry"
                )
        seen[path] = kind
        if sink is None:
            continue
        if e.is_dir:
            sink.mkdir(path, e)
        elif e.is_file:
            sink.file(path, e, reader)
        elif e.type == ord("2"):
            sink.symlink(path, e)
        elif e.type == ord("1"):
            sink.hardlink(path, target)
        else:
            sink.node(path, e)
    if manifest is None:
        raise _invalid("image archive has no manifest")
    if seen.get("rootfs") != "d":
        raise _invalid("image archive has no rootfs directory entry")
    return manifest
