"""The libbpf print callback: debug lines are dropped before any formatting (thousands
per load; formatting each cost a third of the load time under TCG); warnings are kept."""

from __future__ import annotations

import ctypes

from bpfnfs.loader import libbpf as lb


def test_debug_lines_dropped_unformatted(lib: lb.Libbpf) -> None:
    lib.clear_log()
    # A NULL va_list: formatting it would crash, so returning 0 proves nothing was formatted.
    assert lib._on_print(lb.LIBBPF_DEBUG, b"relo %d", 0) == 0
    assert lib.last_log() == []


def test_warnings_kept(lib: lb.Libbpf) -> None:
    lib.clear_log()
    # No conversion in the format: vsnprintf never reads the va_list.
    args = ctypes.create_string_buffer(32)
    assert lib._on_print(lb.LIBBPF_WARN, b"prog 'x': failed to load\n", ctypes.addressof(args)) == 0
    assert lib.last_log() == ["prog 'x': failed to load"]
