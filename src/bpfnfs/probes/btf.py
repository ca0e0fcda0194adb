"""Kernel BTF queries through libbpf: does a function exist in a module's BTF,
and with how many arguments. fentry/fexit targets are resolved when the object
loads, so one missing or re-shaped function would fail the whole load; the
agent checks each target first and leaves the ones that do not fit unloaded.

Where BTF comes from (BtfSource): the kernel's own (/sys/kernel/btf), or a vmlinux
BTF file (btf.kernel) and a directory of module BTF (btf.model_dir). libbpf's
btf_custom_path replaces the kernel's BTF for CO-RE entirely: with it, libbpf
looks for no module BTF at all. So when either is set, vmlinux and the NFS
modules' split BTF are merged into one standalone file (CoreBtf) for libbpf."""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bpfnfs.loader.libbpf import Libbpf, errno_message, libbpf

BTF_KIND_PTR = 2
BTF_KIND_TYPEDEF = 8
BTF_KIND_FUNC = 12
BTF_KIND_FUNC_PROTO = 13


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("type", ctypes.c_uint32)]


SYSFS_BTF = Path("/sys/kernel/btf")
BTF_MAGIC = 0xEB9F
# struct btf_header: magic, version, flags, hdr_len, type_off, type_len, str_off, str_len.
_HEADER = struct.Struct("=HBBIIIII")  # native byte order, as libbpf writes it
# Modules whose split BTF goes into the merged CO-RE file: the programs read sunrpc's
# and nfs's structures; nfsv3/nfsv4 carry copies of them, as in libbpf's own search.
MERGE_MODULES = ("sunrpc", "nfs", "nfsv3", "nfsv4")


class BtfError(Exception):
    """A BTF file is missing, unreadable or inconsistent; str() names the file."""


@dataclass(frozen=True)
class BtfSource:
    """Where bpfnfs and libbpf take BTF from.

    kernel: a vmlinux BTF file (config btf.kernel) for kernels whose own is missing
    or unusable; None: the kernel's own, sysfs/vmlinux. module_dir: split module BTF
    (config btf.model_dir), made against that vmlinux. sysfs: where the kernel
    exposes its own BTF (tests point it elsewhere)."""

    kernel: Path | None = None
    module_dir: Path = SYSFS_BTF
    sysfs: Path = SYSFS_BTF

    @property
    def vmlinux(self) -> Path:
        """The vmlinux BTF CO-RE and bpfnfs's own reads use."""
        return self.kernel if self.kernel is not None else self.sysfs / "vmlinux"

    @property
    def custom(self) -> bool:
        """Not the kernel's own: CO-RE then needs a merged file (btf_custom_path)."""
        return self.kernel is not None or self.module_dir != self.sysfs

    def module_file(self, module: str) -> Path | None:
        p = self.module_dir / module
        return p if p.is_file() else None

    def describe(self) -> str:
        base = f"btf.kernel {self.kernel}" if self.kernel is not None else f"{self.sysfs}/vmlinux"
        return f"{base}, module BTF from {self.module_dir}"


def _header(data: bytes, what: object) -> tuple[int, int, int, int, int]:
    """(hdr_len, type_off, type_len, str_off, str_len) of raw BTF, checked against its size."""
    if len(data) < _HEADER.size:
        raise BtfError(f"{what} is not a BTF file (shorter than a BTF header)")
    magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
    if magic != BTF_MAGIC:
        raise BtfError(f"{what} is not a BTF file (no 0xeB9F magic at its start)")
    end = hdr_len + max(type_off + type_len, str_off + str_len)
    if hdr_len < _HEADER.size or end > len(data):
        raise BtfError(
            f"{what} is truncated or damaged (its BTF header describes {end} bytes, it has {len(data)})"
        )
    return hdr_len, type_off, type_len, str_off, str_len


def file_problem(path: Path) -> str | None:
    """Why `path` is not a usable raw BTF file, or None."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"cannot read it ({e.strerror})"
    try:
        _header(data, "it")
    except BtfError as e:
        return str(e)
    return None


def base_mismatch(source: BtfSource) -> str | None:
    """Split module BTF is only valid on the vmlinux BTF it was made against. When
    module_dir has a vmlinux of its own (as /sys/kernel/btf has) and btf.kernel is
    another one, the module files do not fit btf.kernel: why, or None."""
    if source.kernel is None:
        return None
    theirs = source.module_dir / "vmlinux"
    try:
        if theirs.resolve() == source.kernel.resolve():
            return None
        with theirs.open("rb") as f:
            a = f.read(_HEADER.size)
        with source.kernel.open("rb") as f:
            b = f.read(_HEADER.size)
    except OSError:
        return None  # no vmlinux there: its files are taken as made against btf.kernel
    if a == b:
        return None
    return (
        f"btf.model_dir {source.module_dir} holds module BTF made against {theirs}, which is not btf.kernel "
        f"{source.kernel}; split module BTF only fits the vmlinux BTF it was made against: set btf.model_dir "
        f"to module BTF made against {source.kernel} (pahole --btf_base {source.kernel} "
        "--btf_encode_detached sunrpc.btf sunrpc.ko, and the same for nfs)"
    )


def function_arity(
    queries: dict[str, tuple[list[str], list[str]]],
    lib: Libbpf | None = None,
    source: BtfSource | None = None,
) -> dict[str, dict[str, int | None]]:
    """module -> {name: argument count in that module's BTF (None: absent, or no BTF)}.

    queries: module -> (function names, tracepoint names); a tracepoint's count is that
    of its btf_trace_<name> typedef without the leading data pointer, keyed "tp:<name>".
    vmlinux's BTF is parsed once for all modules (it is the base of each): btf.kernel's
    when the source names one, and the modules' split BTF is read from its module_dir."""
    L = (lib or libbpf()).lib
    source = source or BtfSource()
    out: dict[str, dict[str, int | None]] = {
        m: dict.fromkeys([*names, *(f"tp:{t}" for t in tps)]) for m, (names, tps) in queries.items()
    }
    if source.kernel is not None:
        vmlinux = L.btf__parse(str(source.kernel).encode(), None)
    else:
        vmlinux = L.btf__load_vmlinux_btf()
    if not vmlinux:
        return out
    # libbpf's btf__load_module_btf reads /sys/kernel/btf/<module> only.
    sysfs_modules = source.kernel is None and source.module_dir == source.sysfs == SYSFS_BTF

    def module_btf(module: str) -> int | None:
        if sysfs_modules:
            return L.btf__load_module_btf(module.encode(), vmlinux)
        path = source.module_file(module)
        return L.btf__parse_split(str(path).encode(), vmlinux) if path is not None else None

    try:
        for module, (names, tps) in queries.items():
            mod = module_btf(module) if module != "vmlinux" else None
            btf = mod or (vmlinux if module == "vmlinux" else None)
            if not btf:
                continue
            try:
                for name in names:
                    tid = L.btf__find_by_name_kind(btf, name.encode(), BTF_KIND_FUNC)
                    if tid <= 0:
                        continue
                    fn = _BtfType.from_address(L.btf__type_by_id(btf, tid))
                    proto = _BtfType.from_address(L.btf__type_by_id(btf, fn.type))
                    out[module][name] = proto.info & 0xFFFF
                for tp in tps:
                    out[module][f"tp:{tp}"] = _tracepoint_nargs(L, btf, tp)
            finally:
                if mod:
                    L.btf__free(mod)
    finally:
        L.btf__free(vmlinux)
    return out


def _kind(t: _BtfType) -> int:
    return (t.info >> 24) & 0x1F


def _tracepoint_nargs(L: ctypes.CDLL, btf: int, name: str) -> int | None:
    """typedef void (*btf_trace_<name>)(void *, args...): the number of args."""
    tid = L.btf__find_by_name_kind(btf, f"btf_trace_{name}".encode(), BTF_KIND_TYPEDEF)
    if tid <= 0:
        return None
    t = _BtfType.from_address(L.btf__type_by_id(btf, tid))
    for want in (BTF_KIND_PTR, BTF_KIND_FUNC_PROTO):
        t = _BtfType.from_address(L.btf__type_by_id(btf, t.type))
        if _kind(t) != want:
            return None
    return max(0, (t.info & 0xFFFF) - 1)


# ---- one standalone BTF for libbpf's btf_custom_path --------------------------------------------

# Per BTF kind: (the third word of struct btf_type is a type id, the words that follow it
# once, the words of each of vlen members), each word "s" (string offset), "t" (type id)
# or "-" (anything else). Kinds from include/uapi/linux/btf.h.
_KINDS: dict[int, tuple[bool, str, str]] = {
    1: (False, "-", ""),  # INT: encoding
    2: (True, "", ""),  # PTR
    3: (False, "tt-", ""),  # ARRAY: type, index_type, nelems
    4: (False, "", "st-"),  # STRUCT: name_off, type, offset
    5: (False, "", "st-"),  # UNION
    6: (False, "", "s-"),  # ENUM: name_off, val
    7: (False, "", ""),  # FWD
    8: (True, "", ""),  # TYPEDEF
    9: (True, "", ""),  # VOLATILE
    10: (True, "", ""),  # CONST
    11: (True, "", ""),  # RESTRICT
    12: (True, "", ""),  # FUNC (vlen: linkage)
    13: (True, "", "st"),  # FUNC_PROTO: params name_off, type
    14: (True, "-", ""),  # VAR: linkage
    15: (False, "", "t--"),  # DATASEC: type, offset, size
    16: (False, "", ""),  # FLOAT
    17: (True, "-", ""),  # DECL_TAG: component_idx
    18: (True, "", ""),  # TYPE_TAG
    19: (False, "", "s--"),  # ENUM64: name_off, val_lo32, val_hi32
}


def _records(words: memoryview, what: object) -> Iterator[tuple[int, tuple[bool, str, str], int]]:
    """(index of the record's first word, its kind's layout, vlen) for each type record."""
    i, n = 0, len(words)
    while i < n:
        if i + 3 > n:
            raise BtfError(f"{what}: truncated type record")
        info = words[i + 1]
        kind = (info >> 24) & 0x1F
        spec = _KINDS.get(kind)
        if spec is None:
            raise BtfError(f"{what}: unknown BTF kind {kind}")
        vlen = info & 0xFFFF if spec[2] else 0
        yield i, spec, vlen
        i += 3 + len(spec[1]) + vlen * len(spec[2])
    if i != n:
        raise BtfError(f"{what}: truncated type record")


def _count_types(types: bytes | bytearray, what: object) -> int:
    return sum(1 for _ in _records(memoryview(types).cast("I"), what))


def _append_split(
    types: bytearray, what: object, n_base: int, base_strs: int, own_strs: int, id_shift: int, str_shift: int
) -> int:
    """Rewrite split BTF type records in place for a standalone BTF in which they come
    id_shift types and str_shift string bytes after where the split numbering puts them
    (ids above the base's n_base, string offsets from the base's string size on).
    Returns how many types the split holds."""
    n_own = _count_types(types, what)
    words = memoryview(types).cast("I")
    top_id = n_base + n_own
    top_str = base_strs + own_strs

    def fix(w: int, how: str) -> None:
        v = words[w]
        if how == "t" and v > n_base:
            if v > top_id:
                raise BtfError(f"{what}: type id {v} beyond its {top_id} types")
            words[w] = v + id_shift
        elif how == "s" and v >= base_strs:
            if v >= top_str:
                raise BtfError(f"{what}: string offset {v} beyond its strings")
            words[w] = v + str_shift

    for i, (ref, once, member), vlen in _records(words, what):
        fix(i, "s")
        if ref:
            fix(i + 2, "t")
        j = i + 3
        for how in once:
            fix(j, how)
            j += 1
        for _ in range(vlen):
            for how in member:
                fix(j, how)
                j += 1
    return n_own


def merge_split(base: bytes, splits: Sequence[tuple[str, bytes]], base_types: int | None = None) -> bytes:
    """One standalone BTF: the base's types, then each split BTF's (made against that
    base) renumbered to follow; strings likewise. libbpf 1.1's btf__add_btf refuses a
    split source (-ENOTSUP), hence this. splits: (name for messages, raw split BTF)."""
    bh, bto, btl, bso, bsl = _header(base, "vmlinux BTF")
    base_t = base[bh + bto : bh + bto + btl]
    n_base = _count_types(base_t, "vmlinux BTF") if base_types is None else base_types
    types: list[bytes | bytearray] = [base_t]
    strs = [base[bh + bso : bh + bso + bsl]]
    n_total, str_total = n_base, bsl
    for name, raw in splits:
        h, to, tl, so, sl = _header(raw, f"module BTF {name}")
        t = bytearray(raw[h + to : h + to + tl])
        n_total += _append_split(t, f"module BTF {name}", n_base, bsl, sl, n_total - n_base, str_total - bsl)
        str_total += sl
        types.append(t)
        strs.append(raw[h + so : h + so + sl])
    type_len = sum(len(t) for t in types)
    version, flags = base[2], base[3]
    head = _HEADER.pack(BTF_MAGIC, version, flags, _HEADER.size, 0, type_len, type_len, str_total)
    return head + b"".join(types) + b"".join(strs)


def _raw_data(L: ctypes.CDLL, btf: int) -> bytes:
    size = ctypes.c_uint32()
    p = L.btf__raw_data(btf, ctypes.byref(size))
    if not p:
        raise BtfError(f"libbpf cannot serialise BTF ({errno_message(0)})")
    return ctypes.string_at(p, size.value)


def merged_btf(
    source: BtfSource, modules: Sequence[str] = MERGE_MODULES, lib: Libbpf | None = None
) -> tuple[bytes, tuple[str, ...]]:
    """source's vmlinux BTF with the split BTF of those `modules` that module_dir has
    appended: (standalone BTF, the modules merged). libbpf parses every file first, so
    a damaged one or one made against another vmlinux is refused with its name."""
    mismatch = base_mismatch(source)
    if mismatch:
        raise BtfError(mismatch)
    L = (lib or libbpf()).lib
    path = source.vmlinux
    ctypes.set_errno(0)
    base = L.btf__parse(str(path).encode(), None)
    if not base:
        raise BtfError(f"cannot parse {path} as BTF ({errno_message(0)})")
    splits: list[tuple[str, bytes]] = []
    try:
        base_raw = _raw_data(L, base)
        n_base = L.btf__type_cnt(base) - 1
        for m in modules:
            p = source.module_file(m)
            if p is None:
                continue
            ctypes.set_errno(0)
            mod = L.btf__parse_split(str(p).encode(), base)
            if not mod:
                raise BtfError(
                    f"cannot parse {p} as module BTF on top of {path} ({errno_message(0)}); module BTF "
                    "must be made against that vmlinux BTF"
                )
            try:
                splits.append((m, _raw_data(L, mod)))
            finally:
                L.btf__free(mod)
    finally:
        L.btf__free(base)
    return merge_split(base_raw, splits, n_base), tuple(m for m, _ in splits)


class CoreBtf:
    """The file handed to libbpf as btf_custom_path when BTF does not come from the
    kernel itself: vmlinux plus the NFS modules' split BTF (merged_btf), in a private
    temporary file. Rebuilt when those files change (nfsv4's appears in sysfs with its
    module); close() removes it."""

    def __init__(
        self,
        source: BtfSource,
        modules: Sequence[str] = MERGE_MODULES,
        lib: Libbpf | None = None,
        directory: Path | None = None,
    ) -> None:
        self.source = source
        self.modules = tuple(modules)
        self.merged: tuple[str, ...] = ()  # modules in the current file
        self.path: Path | None = None
        self._lib = lib
        self._dir = directory
        self._stamp: tuple[tuple[str, int, int], ...] | None = None

    def _files(self) -> tuple[tuple[str, int, int], ...]:
        paths = [self.source.vmlinux, *(self.source.module_file(m) for m in self.modules)]
        out = []
        for p in paths:
            if p is None:
                continue
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((str(p), st.st_size, st.st_mtime_ns))
        return tuple(out)

    def refresh(self) -> bool:
        """Write the file if it is missing or its inputs changed; True if written."""
        stamp = self._files()
        if self.path is not None and stamp == self._stamp:
            return False
        data, merged = merged_btf(self.source, self.modules, self._lib)
        fd, name = tempfile.mkstemp(prefix="bpfnfs-core-", suffix=".btf", dir=self._dir)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        self._remove()
        self.path, self.merged, self._stamp = Path(name), merged, stamp
        return True

    def describe(self) -> str:
        mods = ", ".join(self.merged) if self.merged else "none"
        size = self.path.stat().st_size if self.path is not None and self.path.exists() else 0
        return (
            f"CO-RE types from {self.source.describe()} (modules merged: {mods}; "
            f"{size / 1e6:.1f} MB in {self.path})"
        )

    def _remove(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self.path = None

    def close(self) -> None:
        self._remove()
        self._stamp = None
        self.merged = ()
