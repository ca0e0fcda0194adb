"""What the kernel keeps about each loaded program: run count and run time (only while
BPF statistics are enabled) and the runs it skipped because the program was already
running on that CPU (recursion_misses, 5.12+), read with BPF_OBJ_GET_INFO_BY_FD.

The kernel copies min(our size, its size) of struct bpf_prog_info and reports how
much it filled in info_len; a field past that is "not available" (None), never 0.
"""

from __future__ import annotations

import ctypes
from ctypes import c_char, c_uint8, c_uint32, c_uint64
from dataclasses import dataclass

from bpfnfs.loader.libbpf import Libbpf, LibbpfError, errno_message


class BpfProgInfo(ctypes.Structure):
    """struct bpf_prog_info (include/uapi/linux/bpf.h) up to the fields bpfnfs reads."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("tag", c_uint8 * 8),
        ("jited_prog_len", c_uint32),
        ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", c_uint64),
        ("xlated_prog_insns", c_uint64),
        ("load_time", c_uint64),
        ("created_by_uid", c_uint32),
        ("nr_map_ids", c_uint32),
        ("map_ids", c_uint64),
        ("name", c_char * 16),
        ("ifindex", c_uint32),
        ("gpl_compatible", c_uint32),
        ("netns_dev", c_uint64),
        ("netns_ino", c_uint64),
        ("nr_jited_ksyms", c_uint32),
        ("nr_jited_func_lens", c_uint32),
        ("jited_ksyms", c_uint64),
        ("jited_func_lens", c_uint64),
        ("btf_id", c_uint32),
        ("func_info_rec_size", c_uint32),
        ("func_info", c_uint64),
        ("nr_func_info", c_uint32),
        ("nr_line_info", c_uint32),
        ("line_info", c_uint64),
        ("jited_line_info", c_uint64),
        ("nr_jited_line_info", c_uint32),
        ("line_info_rec_size", c_uint32),
        ("jited_line_info_rec_size", c_uint32),
        ("nr_prog_tags", c_uint32),
        ("prog_tags", c_uint64),
        ("run_time_ns", c_uint64),  # 5.1
        ("run_cnt", c_uint64),  # 5.1
        ("recursion_misses", c_uint64),  # 5.12
        ("verified_insns", c_uint32),  # 5.16
        ("attach_btf_obj_id", c_uint32),
        ("attach_btf_id", c_uint32),
        ("_pad", c_uint32),
    ]


def _end(name: str) -> int:
    f = getattr(BpfProgInfo, name)
    return int(f.offset + f.size)


@dataclass(frozen=True)
class ProgStats:
    id: int
    run_cnt: int | None  # None: not in this kernel's bpf_prog_info
    run_time_ns: int | None
    recursion_misses: int | None  # runs the kernel skipped: the program was busy on that CPU


def parse_prog_info(raw: bytes, info_len: int) -> ProgStats:
    """ProgStats from the bytes the kernel wrote and the length it reported."""
    info = BpfProgInfo.from_buffer_copy(raw.ljust(ctypes.sizeof(BpfProgInfo), b"\0"))

    def field(name: str) -> int | None:
        return int(getattr(info, name)) if info_len >= _end(name) else None

    return ProgStats(
        id=int(info.id),
        run_cnt=field("run_cnt"),
        run_time_ns=field("run_time_ns"),
        recursion_misses=field("recursion_misses"),
    )


def read_prog_stats(lib: Libbpf, fd: int) -> ProgStats:
    info = BpfProgInfo()
    length = c_uint32(ctypes.sizeof(info))
    ret = lib.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(length))
    if ret:
        raise LibbpfError(f"cannot read BPF program info of fd {fd}: {errno_message(ret)}")
    return parse_prog_info(ctypes.string_at(ctypes.addressof(info), ctypes.sizeof(info)), length.value)


__all__ = ["BpfProgInfo", "ProgStats", "parse_prog_info", "read_prog_stats"]
