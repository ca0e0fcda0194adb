"""ctypes bindings to the distribution's libbpf.so.1 (>= 1.0).

Every argtypes/restype lives here, so an ABI change is one diff. Only calls that
exist in libbpf 1.0 are used (Debian 12 ships 1.1.2); see docs/design.md for the
1.1 traps this avoids (no ring_buffer__consume_n, .rodata only writable before
load).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from collections import deque
from collections.abc import Callable
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_int,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)

MIN_MAJOR = 1
MIN_MINOR = 0


class LibbpfError(Exception):
    """libbpf is missing, too old, or a call failed."""


class BpfObjectOpenOpts(Structure):
    # Same layout from libbpf 0.5 through 1.7 (checked in libbpf.h).
    _fields_ = [
        ("sz", c_size_t),
        ("object_name", c_char_p),
        ("relaxed_maps", c_bool),
        ("pin_root_path", c_char_p),
        ("_attach_prog_fd", c_uint32),
        ("kconfig", c_char_p),
        ("btf_custom_path", c_char_p),
        ("kernel_log_buf", c_char_p),
        ("kernel_log_size", c_size_t),
        ("kernel_log_level", c_uint32),
    ]


class BpfMapBatchOpts(Structure):
    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


# libbpf_print_fn_t: int (*)(enum libbpf_print_level, const char *fmt, va_list)
# va_list arrives as a pointer on x86-64 and is handed straight to vsnprintf.
PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)

LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2


def _bind(lib: ctypes.CDLL) -> None:
    sig: dict[str, tuple[object, list[object]]] = {
        "libbpf_major_version": (c_uint32, []),
        "libbpf_minor_version": (c_uint32, []),
        "libbpf_set_print": (c_void_p, [PRINT_FN]),
        "libbpf_num_possible_cpus": (c_int, []),
        "bpf_object__open_mem": (c_void_p, [c_void_p, c_size_t, POINTER(BpfObjectOpenOpts)]),
        "bpf_object__load": (c_int, [c_void_p]),
        "bpf_object__close": (None, [c_void_p]),
        "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
        "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
        "bpf_program__name": (c_char_p, [c_void_p]),
        "bpf_program__section_name": (c_char_p, [c_void_p]),
        "bpf_program__set_autoload": (c_int, [c_void_p, c_bool]),
        "bpf_program__autoload": (c_bool, [c_void_p]),
        "bpf_program__attach": (c_void_p, [c_void_p]),
        "bpf_program__fd": (c_int, [c_void_p]),
        "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, POINTER(c_uint32)]),
        "bpf_enable_stats": (c_int, [c_int]),
        "bpf_link__destroy": (c_int, [c_void_p]),
        "bpf_map__name": (c_char_p, [c_void_p]),
        "bpf_map__fd": (c_int, [c_void_p]),
        "bpf_map__key_size": (c_uint32, [c_void_p]),
        "bpf_map__value_size": (c_uint32, [c_void_p]),
        "bpf_map__max_entries": (c_uint32, [c_void_p]),
        "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
        "bpf_map__type": (c_int, [c_void_p]),
        "bpf_map__set_initial_value": (c_int, [c_void_p, c_void_p, c_size_t]),
        "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
        "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
        "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
        "bpf_map_lookup_and_delete_elem": (c_int, [c_int, c_void_p, c_void_p]),
        "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
        "bpf_map__reuse_fd": (c_int, [c_void_p, c_int]),
        "bpf_program__attach_tracepoint": (c_void_p, [c_void_p, c_char_p, c_char_p]),
        "ring_buffer__new": (c_void_p, [c_int, c_void_p, c_void_p, c_void_p]),
        "ring_buffer__consume": (c_int, [c_void_p]),
        "ring_buffer__free": (None, [c_void_p]),
        "btf__load_vmlinux_btf": (c_void_p, []),
        "btf__load_module_btf": (c_void_p, [c_char_p, c_void_p]),
        "btf__parse": (c_void_p, [c_char_p, c_void_p]),
        "btf__parse_split": (c_void_p, [c_char_p, c_void_p]),
        "btf__raw_data": (c_void_p, [c_void_p, POINTER(c_uint32)]),
        "btf__type_cnt": (c_uint32, [c_void_p]),
        "btf__find_by_name_kind": (c_int, [c_void_p, c_char_p, c_uint32]),
        "btf__type_by_id": (c_void_p, [c_void_p, c_uint32]),
        "btf__free": (None, [c_void_p]),
        "bpf_map_lookup_batch": (
            c_int,
            [c_int, c_void_p, c_void_p, c_void_p, c_void_p, POINTER(c_uint32), POINTER(BpfMapBatchOpts)],
        ),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


class Libbpf:
    """The process-wide libbpf handle, with its log captured for error messages."""

    def __init__(self, path: str | None = None) -> None:
        name = path or os.environ.get("BPFNFS_LIBBPF") or "libbpf.so.1"
        try:
            self.lib = ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            raise LibbpfError(
                f"cannot load {name} ({e}); install libbpf >= {MIN_MAJOR}.{MIN_MINOR} "
                "(Debian/Ubuntu: apt install libbpf1)"
            ) from None
        try:
            _bind(self.lib)
        except AttributeError as e:
            raise LibbpfError(
                f"{name} lacks {e.args[0].split(':')[-1].strip()}; bpfnfs needs libbpf >= "
                f"{MIN_MAJOR}.{MIN_MINOR}"
            ) from None
        self.version = (self.lib.libbpf_major_version(), self.lib.libbpf_minor_version())
        if self.version < (MIN_MAJOR, MIN_MINOR):
            raise LibbpfError(
                f"libbpf {self.version[0]}.{self.version[1]} is too old; bpfnfs needs >= "
                f"{MIN_MAJOR}.{MIN_MINOR} (Debian 12: apt install libbpf1)"
            )
        libc_name = ctypes.util.find_library("c") or "libc.so.6"
        self._libc = ctypes.CDLL(libc_name)
        self._libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
        self._libc.vsnprintf.restype = c_int
        self.log: deque[str] = deque(maxlen=2000)
        self.pending: BaseException | None = None
        self.debug = False  # features.debug: keep libbpf's debug lines too
        self.echo: Callable[[str], None] | None = None  # features.debug: every line, as it comes
        self._lock = threading.Lock()
        self._buf = ctypes.create_string_buffer(1 << 18)
        self._print_cb = PRINT_FN(self._on_print)  # keep a reference: libbpf holds the pointer
        self.lib.libbpf_set_print(self._print_cb)

    def _on_print(self, level: int, fmt: bytes, args: int) -> int:
        # libbpf sends thousands of debug lines per load (every CO-RE relocation):
        # unless asked for, they are dropped before any formatting (it cost a fresh
        # 256 KiB buffer each, a third of the load time under TCG).
        if level > LIBBPF_INFO and not self.debug:
            return 0
        # One call only: a va_list cannot be walked twice. Verifier logs arrive
        # as a single message, hence the large buffer, allocated once.
        try:
            with self._lock:
                self._libc.vsnprintf(self._buf, len(self._buf), fmt, args)
                text = self._buf.value.decode("utf-8", "replace").rstrip("\n")
                self.log.extend(text.splitlines())
            if self.echo is not None:
                for line in text.splitlines():
                    self.echo(line)
        except BaseException as e:
            # A signal handler (SIGTERM, Ctrl-C) that ran inside this callback: ctypes
            # drops exceptions raised here, so keep it for raise_pending().
            self.pending = e
        return 0

    def raise_pending(self) -> None:
        """Re-raise what a signal handler raised while libbpf was calling back into Python."""
        e, self.pending = self.pending, None
        if e is not None:
            raise e

    def last_log(self, n: int = 12) -> list[str]:
        with self._lock:
            return list(self.log)[-n:]

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    @property
    def version_string(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    def num_possible_cpus(self) -> int:
        n = self.lib.libbpf_num_possible_cpus()
        if n <= 0:
            raise LibbpfError(f"cannot determine possible CPUs: {os.strerror(-n)}")
        return n


def errno_message(ret: int) -> str:
    """libbpf 1.x returns -errno (and NULL + errno for pointers)."""
    code = -ret if ret < 0 else ctypes.get_errno()
    return f"{errno.errorcode.get(code, code)}: {os.strerror(code)}"


_instance: Libbpf | None = None
_instance_lock = threading.Lock()


def libbpf() -> Libbpf:
    global _instance
    with _instance_lock:
        if _instance is None:
            _instance = Libbpf()
        return _instance


__all__ = [
    "LIBBPF_DEBUG",
    "LIBBPF_INFO",
    "LIBBPF_WARN",
    "BpfMapBatchOpts",
    "BpfObjectOpenOpts",
    "Libbpf",
    "LibbpfError",
    "errno_message",
    "libbpf",
]
