"""Kernel BTF queries through libbpf: does a function exist in a module's BTF,
and with how many arguments. fentry/fexit targets are resolved when the object
loads, so one missing or re-shaped function would fail the whole load; the
agent checks each target first and leaves the ones that do not fit unloaded."""

from __future__ import annotations

import ctypes

from bpfnfs.loader.libbpf import Libbpf, libbpf

BTF_KIND_PTR = 2
BTF_KIND_TYPEDEF = 8
BTF_KIND_FUNC = 12
BTF_KIND_FUNC_PROTO = 13


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("type", ctypes.c_uint32)]


def function_arity(
    queries: dict[str, tuple[list[str], list[str]]], lib: Libbpf | None = None
) -> dict[str, dict[str, int | None]]:
    """module -> {name: argument count in that module's BTF (None: absent, or no BTF)}.

    queries: module -> (function names, tracepoint names); a tracepoint's count is that
    of its btf_trace_<name> typedef without the leading data pointer, keyed "tp:<name>".
    vmlinux's BTF is parsed once for all modules (it is the base of each)."""
    L = (lib or libbpf()).lib
    out: dict[str, dict[str, int | None]] = {
        m: dict.fromkeys([*names, *(f"tp:{t}" for t in tps)]) for m, (names, tps) in queries.items()
    }
    vmlinux = L.btf__load_vmlinux_btf()
    if not vmlinux:
        return out
    try:
        for module, (names, tps) in queries.items():
            mod = L.btf__load_module_btf(module.encode(), vmlinux) if module != "vmlinux" else None
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
