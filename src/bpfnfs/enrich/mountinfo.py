"""Parser for ``/proc/<pid>/mountinfo``.

Line format (see proc(5), ``show_mountinfo()`` in fs/proc_namespace.c)::

    36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)     (10)        (11)

Field (7) is zero or more optional tagged fields, terminated by the lone ``-``
token (8).  The kernel escapes space, tab, newline and backslash in paths and
sources as three-digit octal (``\\040``, ``\\011``, ``\\012``, ``\\134``), so
the line can be split on single spaces.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Mount",
    "MountinfoError",
    "nfs_mounts",
    "parse_mountinfo",
    "parse_super_options",
    "read_mountinfo",
    "unescape_octal",
]

NFS_FSTYPES = frozenset({"nfs", "nfs4"})

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
# ASCII-only on purpose: int() would also accept "+1", "1_0" or non-ASCII digits.
_UINT = re.compile(r"[0-9]+")
_DEVNO = re.compile(r"([0-9]+):([0-9]+)")
_MAX_SHOWN = 120


def unescape_octal(text: str) -> str:
    """Undo the kernel's ``\\ooo`` escaping (``mangle()``/``seq_escape()``).

    Only exact three-digit octal escapes are decoded; any other backslash is
    kept literally, since the kernel always escapes a real backslash as ``\\134``.
    """
    if "\\" not in text:
        return text
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_super_options(text: str) -> dict[str, str]:
    """Parse ``k=v,flag,...`` into a dict; bare flags map to ``""``, the last duplicate wins."""
    opts: dict[str, str] = {}
    for item in text.split(","):
        if not item:
            continue
        key, _, value = item.partition("=")
        opts[key] = value
    return opts


class MountinfoError(ValueError):
    """A malformed mountinfo line.

    ``args`` holds ``(lineno, line, reason)`` so the exception survives pickling.
    """

    def __init__(self, lineno: int, line: str, reason: str) -> None:
        super().__init__(lineno, line, reason)
        self.lineno = lineno
        self.line = line
        self.reason = reason

    def __str__(self) -> str:
        shown = self.line if len(self.line) <= _MAX_SHOWN else self.line[: _MAX_SHOWN - 3] + "..."
        return f"mountinfo line {self.lineno} is malformed ({self.reason}): {shown!r}"


@dataclass(frozen=True, slots=True)
class Mount:
    """One mountinfo entry, with all path-like fields unescaped.

    Hashable: ``super_options`` is a dict and is therefore excluded from the hash
    (but not from ``==``), which keeps the hash/eq contract: equal mounts agree on
    every hashed field.  Treat the dict as read-only.
    """

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mount_point: str
    mount_options: str
    optional: tuple[str, ...]
    fstype: str
    source: str
    super_options: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def dev(self) -> int:
        """The kernel-internal dev_t (``MKDEV``) as BPF reads it from ``sb->s_dev``.

        This is *not* the userspace encoding returned by ``os.stat().st_dev``.
        """
        return (self.major << 20) | self.minor

    @property
    def is_nfs(self) -> bool:
        return self.fstype in NFS_FSTYPES

    @property
    def nfs_version(self) -> str | None:
        """Protocol version from ``vers=`` (e.g. ``"3"``, ``"4.2"``); None for non-NFS mounts.

        Other filesystems (cifs) also use ``vers=``, hence the NFS check first.
        """
        if not self.is_nfs:
            return None
        vers = self.super_options.get("vers")
        if vers:
            return vers
        return "4" if self.fstype == "nfs4" else None

    @property
    def server(self) -> str | None:
        """Server address: ``addr=`` if present, else the host part of ``host:/export``.

        IPv6 brackets are stripped so both sources agree (``addr=`` has none).
        None for non-NFS mounts or a source without a host part.
        """
        if not self.is_nfs:
            return None
        return self.super_options.get("addr") or self.source_host

    @property
    def source_host(self) -> str | None:
        """The host part of ``host:/export`` as mounted (a name or an address); None if none."""
        if not self.is_nfs:
            return None
        host, _ = _split_nfs_source(self.source)
        return host

    @property
    def export(self) -> str | None:
        """The exported path from ``host:/export``; None for non-NFS mounts or a host-less source."""
        if not self.is_nfs:
            return None
        _, path = _split_nfs_source(self.source)
        return path

    @property
    def is_bind_subdir(self) -> bool:
        """True when only a subdirectory of the filesystem is mounted here (bind mount)."""
        return self.root != "/"


def _split_nfs_source(source: str) -> tuple[str | None, str | None]:
    """Split ``host:/path`` or ``[v6addr]:/path`` into (host, path)."""
    if source.startswith("["):
        end = source.find("]")
        if end == -1 or source[end + 1 : end + 2] != ":":
            return None, None
        return source[1:end] or None, source[end + 2 :]
    host, sep, path = source.partition(":")
    if not sep:
        return None, None
    return host or None, path


def _parse_uint(value: str, what: str, lineno: int, line: str) -> int:
    if not _UINT.fullmatch(value):
        raise MountinfoError(lineno, line, f"{what} {value!r} is not a non-negative integer")
    return int(value)


def _parse_line(lineno: int, line: str) -> Mount:
    # Split on single spaces, not str.split(): an empty source yields an empty token
    # ("- ext4  rw") that must keep its place.
    tokens = line.split(" ")
    try:
        # The separator can only follow the six fixed fields; search from there so a
        # root or mount point that is literally "-" is never mistaken for it.
        sep = tokens.index("-", 6)
    except ValueError:
        if len(tokens) < 10:
            raise MountinfoError(
                lineno, line, f"too few fields (expected at least 10, got {len(tokens)})"
            ) from None
        raise MountinfoError(lineno, line, "missing ' - ' separator") from None
    after = tokens[sep + 1 :]
    if len(after) < 3:
        raise MountinfoError(
            lineno, line, f"expected fstype, source and super options after ' - ', got {len(after)} field(s)"
        )

    mount_id = _parse_uint(tokens[0], "mount ID", lineno, line)
    parent_id = _parse_uint(tokens[1], "parent ID", lineno, line)
    devno = _DEVNO.fullmatch(tokens[2])
    if devno is None:
        raise MountinfoError(lineno, line, f"major:minor {tokens[2]!r} is not of the form N:N")
    mount_point = unescape_octal(tokens[4])
    if not mount_point.startswith("/"):
        raise MountinfoError(lineno, line, f"mount point {tokens[4]!r} is not an absolute path")
    if not after[0]:
        raise MountinfoError(lineno, line, "empty filesystem type")

    return Mount(
        mount_id=mount_id,
        parent_id=parent_id,
        major=int(devno.group(1)),
        minor=int(devno.group(2)),
        # Not validated as a path: nsfs roots look like "net:[4026531840]".
        root=unescape_octal(tokens[3]),
        mount_point=mount_point,
        mount_options=tokens[5],
        optional=tuple(t for t in tokens[6:sep] if t),
        fstype=unescape_octal(after[0]),
        source=unescape_octal(after[1]),
        # Some filesystems' show_options() do not escape spaces; keep the remainder whole.
        super_options=parse_super_options(" ".join(after[2:])),
    )


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse the full text of a mountinfo file; blank lines are skipped.

    Raises MountinfoError (with a 1-based line number) on the first malformed line.
    """
    mounts: list[Mount] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        mounts.append(_parse_line(lineno, line))
    return mounts


def read_mountinfo(pid: int | str = "self", proc: str = "/proc") -> list[Mount]:
    """Read and parse ``<proc>/<pid>/mountinfo``.

    OSError (e.g. FileNotFoundError when the process has exited) propagates.
    """
    path = Path(proc) / str(pid) / "mountinfo"
    # surrogateescape: non-UTF-8 path bytes are printed raw by the kernel and must not abort parsing.
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    return parse_mountinfo(text)


def nfs_mounts(mounts: Iterable[Mount]) -> list[Mount]:
    """The NFS (``nfs``/``nfs4``) mounts, in their original order."""
    return [m for m in mounts if m.is_nfs]
