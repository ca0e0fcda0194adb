"""The one BPF ring buffer, drained in batches.

libbpf's ring_buffer__consume() walks the ring; instead of a Python callback per
record, its callback is bpfnfs_sink_cb from the tiny C library built next to
this file (sink.c), which copies records into flat buffers by their header's
(kind, version). Python then decodes each buffer with one struct.iter_unpack.
Each (kind, version) has one fixed size (collect.records.RECORDS)."""

from __future__ import annotations

import ctypes
from importlib import resources

from bpfnfs.loader.libbpf import Libbpf, LibbpfError, errno_message

SINK_MAX = 4
ENOSPC = 28


class _SinkBuf(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("cap", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
        ("rec_size", ctypes.c_uint64),
        ("kind", ctypes.c_uint64),
    ]


class _Sink(ctypes.Structure):
    _fields_ = [("bufs", _SinkBuf * SINK_MAX), ("nbufs", ctypes.c_uint64), ("unknown", ctypes.c_uint64)]


def _sink_library() -> ctypes.CDLL:
    path = resources.files("bpfnfs").joinpath("ringbuf", "_sink.so")
    try:
        return ctypes.CDLL(str(path))
    except OSError:
        raise LibbpfError(
            f"the ring buffer sink {path} is not built; run `make setup` (needs clang) in the source tree"
        ) from None


class RingBuffer:
    """Consumer of one BPF_MAP_TYPE_RINGBUF map; not thread-safe."""

    def __init__(
        self, lib: Libbpf, map_fd: int, records: dict[tuple[int, int], int], batch: int = 8192
    ) -> None:
        """records: {(kind, version): record size} of the records to keep."""
        if not 0 < len(records) <= SINK_MAX:
            raise ValueError(f"1 to {SINK_MAX} record kinds, got {len(records)}")
        self._lib = lib
        self._so = _sink_library()
        self._sink = _Sink()
        self._mem: list[ctypes.Array[ctypes.c_char]] = []
        self.kinds = tuple(records)
        for i, ((kind, version), size) in enumerate(records.items()):
            mem = ctypes.create_string_buffer(size * batch)
            self._mem.append(mem)
            self._sink.bufs[i] = _SinkBuf(ctypes.addressof(mem), size * batch, 0, size, kind | version << 16)
        self._sink.nbufs = len(records)
        cb = ctypes.cast(self._so.bpfnfs_sink_cb, ctypes.c_void_p)
        ctypes.set_errno(0)
        self._rb = lib.lib.ring_buffer__new(map_fd, cb, ctypes.byref(self._sink), None)
        if not self._rb:
            raise LibbpfError(f"cannot open the ring buffer: {errno_message(0)}")

    @property
    def unknown_records(self) -> int:
        return int(self._sink.unknown)

    def drain(self, limit: int = 64) -> dict[tuple[int, int], bytes]:
        """Everything in the ring now, as {(kind, version): concatenated records}."""
        out: dict[tuple[int, int], list[bytes]] = {k: [] for k in self.kinds}
        for _ in range(limit):
            ret = self._lib.lib.ring_buffer__consume(self._rb)
            for i, k in enumerate(self.kinds):
                b = self._sink.bufs[i]
                if b.len:
                    out[k].append(ctypes.string_at(b.data, b.len))
                    b.len = 0
            if ret != -ENOSPC:
                if ret < 0:
                    raise LibbpfError(f"ring buffer consume failed: {errno_message(ret)}")
                break
        return {s: b"".join(parts) for s, parts in out.items()}

    def close(self) -> None:
        if self._rb:
            self._lib.lib.ring_buffer__free(self._rb)
            self._rb = None


__all__ = ["RingBuffer"]
