"""Parser for tracefs event ``format`` files.

``/sys/kernel/tracing/events/<system>/<event>/format`` describes the binary record
a tracepoint emits::

    name: rpc_stats_latency
    ID: 1234
    format:
    \\tfield:unsigned short common_type;\\toffset:0;\\tsize:2;\\tsigned:0;
    ...
    \\tfield:__data_loc char[] progname;\\toffset:40;\\tsize:4;\\tsigned:0;

    print fmt: "..."

Kernels move and rename fields between versions, so BPF programs should take offsets
from here (or BTF) rather than hard-coding them.

Dynamic fields: a ``__data_loc`` field is a u32 at its offset holding
``(length << 16) | offset``, where offset is from the start of the record (common
fields included) and length is in bytes (strings include their trailing NUL).
``__rel_loc`` (kernel 5.19+) has the same layout but its offset counts from the end
of the u32 itself.
"""

from __future__ import annotations

import dataclasses
import errno
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "TRACEFS_CANDIDATES",
    "EventFormat",
    "Field",
    "FormatError",
    "decode_data_loc",
    "parse_format",
    "read_format",
    "tracefs_root",
]

TRACEFS_CANDIDATES: tuple[Path, ...] = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

# Sizes of common scalar element types, used only when a kernel prints an array length
# symbolically (older kernels: "char comm[TASK_COMM_LEN]", "u8 addr[sizeof(...)]").
_ELEMENT_SIZES: dict[str, int] = {
    **dict.fromkeys(("char", "signed char", "unsigned char", "u8", "s8", "__u8", "__s8", "bool"), 1),
    **dict.fromkeys(("short", "unsigned short", "u16", "s16", "__u16", "__s16", "__be16", "__le16"), 2),
    **dict.fromkeys(
        ("int", "unsigned int", "unsigned", "u32", "s32", "__u32", "__s32", "__be32", "__le32"), 4
    ),
    **dict.fromkeys(
        ("u64", "s64", "__u64", "__s64", "__be64", "__le64", "long long", "unsigned long long"), 8
    ),
}

# "<type> <name>[<len>]": the name is the last identifier and must follow whitespace or
# '*' ("void *skb"); the type text itself is taken as is, so exotic types still parse.
_DECL = re.compile(r"(?P<type>.*?[\s*])\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<array>\[[^\]]*\])?")
_UINT = re.compile(r"[0-9]+")
_MAX_SHOWN = 120


class FormatError(ValueError):
    """A tracefs format file is missing, unreadable or malformed, or lacks a field."""


def _shown(line: str) -> str:
    return repr(line if len(line) <= _MAX_SHOWN else line[: _MAX_SHOWN - 3] + "...")


@dataclass(frozen=True, slots=True)
class Field:
    """One field of an event record.

    ``type`` is the C type without the name, arrays keep their suffix
    (``"char[16]"``, ``"__data_loc char[]"``).  ``array_len`` is the element count of a
    fixed array, 0 for ``[]``, None for non-arrays and dynamic (``__data_loc``) fields,
    and also None if the kernel printed a symbolic length for an element type of
    unknown size.
    """

    name: str
    type: str
    offset: int
    size: int
    signed: bool
    is_data_loc: bool = False
    array_len: int | None = None
    is_rel_loc: bool = False

    @property
    def is_common(self) -> bool:
        """Part of the header every event shares (common_type, common_pid, ...)."""
        return self.name.startswith("common_")

    @property
    def is_dynamic(self) -> bool:
        """Payload lives elsewhere in the record (``__data_loc`` or ``__rel_loc``)."""
        return self.is_data_loc or self.is_rel_loc


@dataclass(frozen=True, slots=True)
class EventFormat:
    """A parsed format file.  Hashable on (system, name, id); ``fields`` is in record order."""

    system: str
    name: str
    id: int
    fields: dict[str, Field] = dataclasses.field(default_factory=dict, hash=False)

    def field(self, name: str, *alternatives: str) -> Field:
        """The first of ``name, *alternatives`` that exists (kernels rename fields).

        Raises FormatError naming the event, every name tried and the fields available.
        """
        tried = (name, *alternatives)
        for candidate in tried:
            found = self.fields.get(candidate)
            if found is not None:
                return found
        names = ", ".join(repr(n) for n in tried)
        available = ", ".join(n for n in self.fields if not n.startswith("common_")) or "none"
        what = f"no field {names}" if len(tried) == 1 else f"none of the fields {names}"
        raise FormatError(f"tracepoint {self.system}/{self.name} has {what} (it has: {available})")

    def __contains__(self, name: object) -> bool:
        return name in self.fields

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields.values())


def _array_len(elem_type: str, array: str, size: int) -> int | None:
    inner = array[1:-1].strip()
    if not inner:
        return 0
    if _UINT.fullmatch(inner):
        return int(inner)
    # Symbolic length (pre-6.x kernels print the macro text): derive it from the size.
    elem = _ELEMENT_SIZES.get(" ".join(elem_type.replace("const ", "").split()))
    return size // elem if elem else None


def _parse_field(body: str, lineno: int, line: str, where: str) -> Field:
    def bad(reason: str) -> FormatError:
        return FormatError(f"{where} line {lineno} is malformed ({reason}): {_shown(line)}")

    # "field:<decl>;  offset:N;  size:N;  signed:N;" -- separators are ';' plus any
    # whitespace (usually tabs, but not always).
    parts = [p.strip() for p in body.split(";")]
    decl = parts[0][len("field:") :].strip()
    attrs: dict[str, str] = {}
    for part in parts[1:]:
        if not part:
            continue
        key, sep, value = part.partition(":")
        if not sep:
            raise bad(f"expected 'key:value', got {part!r}")
        attrs[key.strip()] = value.strip()
    for key in ("offset", "size"):
        if key not in attrs:
            raise bad(f"no {key}")
        if not _UINT.fullmatch(attrs[key]):
            raise bad(f"{key} {attrs[key]!r} is not a non-negative integer")
    # Very old kernels omit "signed:"; treat as unsigned.
    signed_text = attrs.get("signed", "0")
    if signed_text not in ("0", "1"):
        raise bad(f"signed {signed_text!r} is not 0 or 1")

    m = _DECL.fullmatch(decl)
    if m is None or not m["type"].strip():
        raise bad(f"cannot split {decl!r} into a type and a name")
    base_type, name, array = m["type"].strip(), m["name"], m["array"]
    offset, size = int(attrs["offset"]), int(attrs["size"])
    is_data_loc = base_type.startswith("__data_loc")
    is_rel_loc = base_type.startswith("__rel_loc")
    if (is_data_loc or is_rel_loc) and size != 4:
        raise bad(f"dynamic field {name} must be 4 bytes, not {size}")
    array_len = None
    if array is not None:
        array_len = _array_len(base_type, array, size)
    return Field(
        name=name,
        type=base_type + (array or ""),
        offset=offset,
        size=size,
        signed=signed_text == "1",
        is_data_loc=is_data_loc,
        array_len=array_len,
        is_rel_loc=is_rel_loc,
    )


def parse_format(text: str, system: str, name: str) -> EventFormat:
    """Parse the text of ``events/<system>/<name>/format``.

    Raises FormatError (with the line number) for a malformed or unknown line in the
    ``format:`` section, a missing or non-numeric ``ID:``, a ``name:`` that differs from
    ``name`` or a duplicate field.  Unknown lines before ``format:`` are ignored.
    """
    where = f"format of {system}/{name}"
    event_id: int | None = None
    fields: dict[str, Field] = {}
    in_format = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        body = line.strip()
        if not body:
            continue
        if body.startswith("field:"):
            f = _parse_field(body, lineno, line, where)
            if f.name in fields:
                raise FormatError(f"{where} line {lineno} repeats field {f.name!r}: {_shown(line)}")
            fields[f.name] = f
        elif line.startswith("print fmt:"):
            # The print format is the last section and may be arbitrarily long.
            break
        elif in_format:
            # Inside "format:" only field lines are valid; a typo must not drop a field silently.
            raise FormatError(f"{where} line {lineno} is not a field line: {_shown(line)}")
        elif line.startswith("format:"):
            in_format = True
        elif line.startswith("name:"):
            declared = line[len("name:") :].strip()
            if declared != name:
                raise FormatError(f"{where} line {lineno} declares event {declared!r}, expected {name!r}")
        elif line.startswith("ID:"):
            value = line[len("ID:") :].strip()
            if not _UINT.fullmatch(value):
                raise FormatError(f"{where} line {lineno} has a non-numeric ID {value!r}")
            event_id = int(value)
    if event_id is None:
        raise FormatError(f"{where} has no 'ID:' line")
    if not fields:
        raise FormatError(f"{where} has no field lines")
    return EventFormat(system=system, name=name, id=event_id, fields=fields)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        # e.g. PermissionError on /sys/kernel/debug (mode 0700) for non-root users.
        return False


def tracefs_root(candidates: Iterable[str | Path] = TRACEFS_CANDIDATES) -> Path | None:
    """The first candidate that contains an ``events`` directory, or None.

    An empty /sys/kernel/tracing (tracefs not mounted there) is skipped, so the
    debugfs location still gets its turn.
    """
    for candidate in candidates:
        root = Path(candidate)
        if _is_dir(root / "events"):
            return root
    return None


def read_format(system: str, event: str, root: str | Path | None = None) -> EventFormat:
    """Read and parse ``<root>/events/<system>/<event>/format``.

    ``root`` defaults to tracefs_root().  Every failure (no tracefs, no such event,
    permission denied, malformed file) raises FormatError with an explanatory sentence.
    """
    if root is None:
        found = tracefs_root()
        if found is None:
            looked = " or ".join(str(p) for p in TRACEFS_CANDIDATES)
            raise FormatError(
                f"tracefs is not available: neither {looked} has an events directory "
                "(mount it with 'mount -t tracefs nodev /sys/kernel/tracing')"
            )
        root = found
    root = Path(root)
    path = root / "events" / system / event / "format"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        if not _is_dir(root / "events"):
            raise FormatError(f"{root} is not a tracefs mount: it has no events directory") from None
        if not _is_dir(root / "events" / system):
            raise FormatError(
                f"tracepoint system {system!r} does not exist under {root}/events "
                "(is the kernel module that provides it loaded?)"
            ) from None
        raise FormatError(
            f"tracepoint {system}/{event} does not exist under {root}/events "
            "(the running kernel may not have it or may name it differently)"
        ) from None
    except PermissionError:
        raise FormatError(f"cannot read {path}: permission denied (run as root)") from None
    except OSError as e:
        reason = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
        raise FormatError(f"cannot read {path}: {reason}") from None
    return parse_format(text, system, event)


def decode_data_loc(raw: bytes, field: Field, byteorder: Literal["little", "big"] = sys.byteorder) -> bytes:
    """The payload of a ``__data_loc``/``__rel_loc`` field from a raw record.

    ``raw`` is the whole record as the tracepoint wrote it, starting with common_type.
    Strings come back with their trailing NUL (``.rstrip(b"\\0")`` if unwanted).
    Raises ValueError if the field is not dynamic or points outside ``raw``.
    """
    if not field.is_dynamic:
        raise ValueError(f"field {field.name!r} is not a __data_loc/__rel_loc field")
    end_of_slot = field.offset + 4
    if len(raw) < end_of_slot:
        raise ValueError(f"record of {len(raw)} bytes is too short for field {field.name!r}")
    loc = int.from_bytes(raw[field.offset : end_of_slot], byteorder)
    length, start = loc >> 16, loc & 0xFFFF
    if field.is_rel_loc:
        start += end_of_slot
    if start + length > len(raw):
        raise ValueError(
            f"field {field.name!r} points at bytes {start}..{start + length} beyond the "
            f"{len(raw)}-byte record"
        )
    return raw[start : start + length]
