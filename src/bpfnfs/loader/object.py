"""A loaded BPF object: open from package data, choose programs, set .rodata,
load, attach, detach. Thin and explicit; the policy lives in probes/."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from bpfnfs.loader.libbpf import BpfObjectOpenOpts, Libbpf, LibbpfError, errno_message, libbpf
from bpfnfs.loader.maps import Map


class LoadError(Exception):
    """The object failed to open, load or attach; message includes libbpf's log tail."""


def object_bytes(name: str = "bpfnfs.bpf.o") -> bytes:
    """The compiled object shipped as package data (built by clang at set-up)."""
    try:
        return resources.files("bpfnfs").joinpath("bpf", name).read_bytes()
    except FileNotFoundError:
        raise LoadError(
            f"the BPF object {name} is not built; run `make setup` (needs clang) in the source tree"
        ) from None


@dataclass
class Program:
    ptr: int
    name: str
    section: str


@dataclass
class Link:
    program: str
    section: str
    ptr: int
    kprobe_event: tuple[Path, str] | None = None  # (kprobe_events file, "group/event") we created


KPROBE_GROUP = "bpfnfs"
_EVENT_SEQ = itertools.count()


@dataclass
class BpfObject:
    """One libbpf bpf_object. Not thread-safe; owned by the agent's main loop."""

    data: bytes
    name: str = "bpfnfs"
    lib: Libbpf = field(default_factory=libbpf)
    ptr: int = 0
    programs: dict[str, Program] = field(default_factory=dict)
    maps: dict[str, Map] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    loaded: bool = False
    # A BTF file for CO-RE instead of the kernel's (libbpf then searches no module BTF);
    # it must still exist at load(). Attach targets (tp_btf, fentry) still need the
    # kernel's own /sys/kernel/btf/vmlinux.
    btf_custom_path: Path | None = None

    def open(self) -> BpfObject:
        L = self.lib.lib
        # libbpf keeps pointers into the buffer until close: hold it.
        self._buf = ctypes.create_string_buffer(self.data, len(self.data))
        self._name = self.name.encode()
        opts = BpfObjectOpenOpts(sz=ctypes.sizeof(BpfObjectOpenOpts), object_name=self._name)
        if self.btf_custom_path is not None:
            self._btf_path = str(self.btf_custom_path).encode()
            opts.btf_custom_path = self._btf_path
        self.lib.clear_log()
        ptr = L.bpf_object__open_mem(self._buf, len(self.data), ctypes.byref(opts))
        self.lib.raise_pending()
        if not ptr:
            raise LoadError(f"cannot open the BPF object: {errno_message(0)}\n" + self._log())
        self.ptr = ptr
        prog = L.bpf_object__next_program(ptr, None)
        while prog:
            name = L.bpf_program__name(prog).decode()
            self.programs[name] = Program(prog, name, L.bpf_program__section_name(prog).decode())
            prog = L.bpf_object__next_program(ptr, prog)
        m = L.bpf_object__next_map(ptr, None)
        while m:
            mp = Map.from_libbpf(self.lib, m)
            self.maps[mp.name] = mp
            m = L.bpf_object__next_map(ptr, m)
        return self

    def _log(self) -> str:
        # features.debug: the whole log, with the verifier's log of a rejected program
        return "\n".join("  libbpf: " + line for line in self.lib.last_log(2000 if self.lib.debug else 25))

    def set_autoload(self, enabled: set[str]) -> None:
        """Load only the named programs (each variant needs its own kernel support)."""
        unknown = enabled - self.programs.keys()
        if unknown:
            raise LoadError(f"unknown BPF programs: {', '.join(sorted(unknown))}")
        for name, p in self.programs.items():
            self.lib.lib.bpf_program__set_autoload(p.ptr, name in enabled)

    def global_map(self, section: str) -> Map:
        """The map of a global-data section (".rodata", ".data", ".bss"): libbpf names it
        "<object>.<section>" (the object name cut short to fit 15 characters)."""
        m = global_map(self.maps, section)
        if m is None:
            raise LoadError(f"the BPF object has no {section} map")
        return m

    def rodata(self) -> Map:
        return self.global_map(".rodata")

    def _check_global_size(self, section: str, m: Map, value: bytes) -> None:
        if len(value) != m.value_size:
            raise LoadError(
                f"{section} size mismatch: user space packs {len(value)} bytes, object has {m.value_size}; "
                "src/bpfnfs/bpf/bpfnfs.h and collect/records.py disagree"
            )

    def set_initial(self, section: str, value: bytes) -> None:
        """Before load: a global-data section's whole initial value."""
        m = self.global_map(section)
        self._check_global_size(section, m, value)
        buf = ctypes.create_string_buffer(value, len(value))
        ret = self.lib.lib.bpf_map__set_initial_value(m.ptr, buf, len(value))
        if ret:
            raise LoadError(f"cannot set {section}: {errno_message(ret)}")

    def write_global(self, section: str, value: bytes) -> None:
        """After load: rewrite a writable global-data section (.data, .bss) as a whole,
        with one map update. The programs see it from their next run."""
        if not self.loaded:
            raise LoadError(f"cannot write {section} before load: use set_initial")
        m = self.global_map(section)
        self._check_global_size(section, m, value)
        m.update(b"\0\0\0\0", value)  # a one-element array: key 0

    def set_rodata(self, value: bytes) -> None:
        """Write the config. Only possible before load with libbpf < 1.5."""
        self.set_initial(".rodata", value)

    def load(self) -> None:
        self.lib.clear_log()
        ret = self.lib.lib.bpf_object__load(self.ptr)
        self.lib.raise_pending()
        if ret:
            raise LoadError(f"the kernel rejected the BPF object ({errno_message(ret)}):\n" + self._log())
        self.loaded = True
        for m in self.maps.values():
            m.refresh_fd(self.lib)

    def attach(self, name: str) -> Link:
        p = self.programs[name]
        self.lib.clear_log()
        ctypes.set_errno(0)
        link = self.lib.lib.bpf_program__attach(p.ptr)
        if link:
            self.links.append(Link(name, p.section, link))
        self.lib.raise_pending()
        if not link:
            hint = _perf_hint(ctypes.get_errno())
            raise LoadError(f"cannot attach {p.section} ({errno_message(0)}){hint}\n" + self._log())
        return self.links[-1]

    def attach_kretprobe(self, name: str, func: str, maxactive: int, tracefs: Path) -> Link:
        """A kretprobe with room for `maxactive` calls in flight, made through tracefs.

        The perf_event_open path libbpf 1.1 uses leaves maxactive at the kernel's
        default, num_possible_cpus() on non-preemptible kernels: every NFS call that
        sleeps beyond that many in flight would silently lose its return. A
        kprobe_events entry takes an explicit maxactive ("r<N>:")."""
        p = self.programs[name]
        event = f"{func}_{os.getpid()}_{next(_EVENT_SEQ)}"  # unique per object: agents may share a process
        events = tracefs / "kprobe_events"
        spec = f"{KPROBE_GROUP}/{event}"
        _remove_kprobe_event(events, spec)  # a leftover of a crashed run with our pid
        try:
            _write_kprobe_events(events, f"r{maxactive}:{spec} {func}")
        except OSError as e:
            raise LoadError(f"cannot create kretprobe {spec} on {func}: {e.strerror}") from None
        self.lib.clear_log()
        ctypes.set_errno(0)
        link = self.lib.lib.bpf_program__attach_tracepoint(p.ptr, KPROBE_GROUP.encode(), event.encode())
        if not link:
            msg = errno_message(0)
            _remove_kprobe_event(events, spec)
            hint = _perf_hint(ctypes.get_errno())
            raise LoadError(f"cannot attach {p.section} through {spec} ({msg}){hint}\n" + self._log())
        lk = Link(name, p.section, link, (events, spec))
        self.links.append(lk)
        return lk

    def detach_all(self) -> None:
        while self.links:
            lk = self.links.pop()
            self.lib.lib.bpf_link__destroy(lk.ptr)
            if lk.kprobe_event:
                _remove_kprobe_event(*lk.kprobe_event)

    def close(self) -> None:
        self.detach_all()
        if self.ptr:
            self.lib.lib.bpf_object__close(self.ptr)
            self.ptr = 0
            self.loaded = False

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def global_map(maps: dict[str, Map], section: str) -> Map | None:
    """The map of a global-data section among an object's maps: "bpfnfs.data" for
    ".data", never ".rodata.str1.1" (custom sections keep their whole name)."""
    for name, m in maps.items():
        if name.endswith(section) and "." not in name[: -len(section)]:
            return m
    return None


def _perf_hint(err: int) -> str:
    """Why perf_event_open (classic tracepoints, kprobes) said EACCES/EPERM to a process that
    has CAP_PERFMON: Debian's and Ubuntu's kernels add kernel.perf_event_paranoid=3 (their
    default), which allows perf events to CAP_SYS_ADMIN only."""
    if err not in (errno.EACCES, errno.EPERM):
        return ""
    try:
        paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    except (OSError, ValueError):
        return ""
    if paranoid < 3:
        return ""
    return (
        f"; kernel.perf_event_paranoid is {paranoid} (Debian's and Ubuntu's default), which allows "
        "perf events only to CAP_SYS_ADMIN: add that capability, or set kernel.perf_event_paranoid=2"
    )


def _write_kprobe_events(events: Path, line: str) -> None:
    # Raw O_APPEND write: Python's open(..., "a") seeks to the end, which tracefs refuses.
    fd = os.open(events, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


def _remove_kprobe_event(events: Path, spec: str) -> None:
    with contextlib.suppress(OSError):  # not there
        _write_kprobe_events(events, f"-:{spec}")


def kprobe_misses(tracefs: Path, specs: set[str]) -> int:
    """Calls our tracefs kprobes missed (kretprobe maxactive exhausted), from kprobe_profile.
    specs: the "group/event" names this agent created (Link.kprobe_event)."""
    total = 0
    try:
        text = (tracefs / "kprobe_profile").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in specs:
            total += int(parts[2])
    return total


__all__ = ["BpfObject", "LibbpfError", "Link", "LoadError", "Program", "global_map", "object_bytes"]
