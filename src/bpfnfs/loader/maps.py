"""BPF map access: whole-map reads in batches (per-CPU values summed by caller)."""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bpfnfs.loader.libbpf import BpfMapBatchOpts, Libbpf, LibbpfError, errno_message
from bpfnfs.loader.sched import MAP_SYSCALLS

ENOTSUPP = 524  # the kernel's own 'operation not supported' (not in errno)

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_RINGBUF = 27

PERCPU_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH}


def _round8(n: int) -> int:
    return (n + 7) & ~7


@dataclass
class Map:
    lib: Libbpf
    ptr: int
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    fd: int = -1
    # (batch, stride) and the lookup buffers of the last batched read; None while one is running.
    _batch_bufs: tuple[Any, ...] | None = field(default=None, init=False, repr=False, compare=False)
    _atomic_delete: bool = field(default=True, init=False, repr=False, compare=False)

    @classmethod
    def from_libbpf(cls, lib: Libbpf, ptr: int) -> Map:
        L = lib.lib
        return cls(
            lib=lib,
            ptr=ptr,
            name=L.bpf_map__name(ptr).decode(),
            type=L.bpf_map__type(ptr),
            key_size=L.bpf_map__key_size(ptr),
            value_size=L.bpf_map__value_size(ptr),
            max_entries=L.bpf_map__max_entries(ptr),
        )

    def reuse_fd(self, fd: int) -> None:
        """Before load: use an existing map (another instance's) instead of creating one."""
        ret = self.lib.lib.bpf_map__reuse_fd(self.ptr, fd)
        if ret:
            raise LibbpfError(f"{self.name}: cannot reuse map fd {fd}: {errno_message(ret)}")

    def refresh_fd(self, lib: Libbpf) -> None:
        self.fd = lib.lib.bpf_map__fd(self.ptr)

    @property
    def percpu(self) -> bool:
        return self.type in PERCPU_TYPES

    def set_max_entries(self, n: int) -> None:
        ret = self.lib.lib.bpf_map__set_max_entries(self.ptr, n)
        if ret:
            raise LibbpfError(f"{self.name}: cannot set max_entries={n}: {errno_message(ret)}")
        self.max_entries = n

    def _stride(self, ncpus: int) -> int:
        # Per-CPU values are laid out per possible CPU, each rounded up to 8 bytes.
        return _round8(self.value_size) * ncpus if self.percpu else self.value_size

    def items(self, batch: int = 256) -> Iterator[tuple[bytes, bytes]]:
        """All (key, value) pairs. Per-CPU values come back as ncpus concatenated slots."""
        ks = self.key_size
        for raw_k, raw_v, n, vsize in self.batches(batch):
            for i in range(n):
                yield raw_k[i * ks : (i + 1) * ks], raw_v[i * vsize : (i + 1) * vsize]

    def batches(self, batch: int = 256) -> Iterator[tuple[bytes, bytes, int, int]]:
        """The map in chunks: (keys, values, count, value stride), for bulk decoding
        with struct.iter_unpack.

        Uses BPF_MAP_LOOKUP_BATCH (one syscall per `batch` keys, kernel >= 5.6) and
        falls back to get_next_key + lookup where batching is unsupported (arrays on
        old kernels, EINVAL/ENOTSUPP)."""
        ncpus = self.lib.num_possible_cpus() if self.percpu else 1
        vsize = self._stride(ncpus)
        # The buffers are reused from one read to the next: allocating (and zeroing) them every
        # interval was a third of the collection's CPU. A nested read of the same map gets its own.
        cached, self._batch_bufs = self._batch_bufs, None
        if cached is None or cached[0] != (batch, vsize):
            cached = (
                (batch, vsize),
                ctypes.create_string_buffer(self.key_size * batch),
                ctypes.create_string_buffer(vsize * batch),
                ctypes.create_string_buffer(max(self.key_size, 8)),
                ctypes.create_string_buffer(max(self.key_size, 8)),
            )
        try:
            yield from self._batches(cached, batch, vsize)
        finally:
            self._batch_bufs = cached

    def _batches(
        self, bufs: tuple[Any, ...], batch: int, vsize: int
    ) -> Iterator[tuple[bytes, bytes, int, int]]:
        L = self.lib.lib
        _, keys, vals, in_batch, out_batch = bufs
        opts = BpfMapBatchOpts(sz=ctypes.sizeof(BpfMapBatchOpts))
        first = True
        while True:
            count = ctypes.c_uint32(batch)
            ctypes.set_errno(0)
            with MAP_SYSCALLS.guard():
                ret = L.bpf_map_lookup_batch(
                    self.fd,
                    None if first else in_batch,
                    out_batch,
                    keys,
                    vals,
                    ctypes.byref(count),
                    ctypes.byref(opts),
                )
            err = -ret if ret < 0 else 0
            if ret and err not in (errno.ENOENT,):
                if first and err in (errno.EINVAL, errno.ENOTSUP, 524):  # 524: ENOTSUPP
                    for k, v in self._items_slow(vsize):
                        yield k, v, 1, vsize
                    return
                raise LibbpfError(f"{self.name}: batch lookup failed: {errno_message(ret)}")
            n = count.value
            if n:
                yield ctypes.string_at(keys, n * self.key_size), ctypes.string_at(vals, n * vsize), n, vsize
            if err == errno.ENOENT:
                return
            ctypes.memmove(in_batch, out_batch, len(out_batch))
            first = False

    def _items_slow(self, vsize: int) -> Iterator[tuple[bytes, bytes]]:
        L = self.lib.lib
        key = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        val = ctypes.create_string_buffer(vsize)
        prev = None
        while L.bpf_map_get_next_key(self.fd, prev, nxt) == 0:
            ctypes.memmove(key, nxt, self.key_size)
            prev = key
            with MAP_SYSCALLS.guard():
                found = L.bpf_map_lookup_elem(self.fd, key, val) == 0
            if found:
                yield key.raw, val.raw

    def lookup(self, key: bytes) -> bytes | None:
        ncpus = self.lib.num_possible_cpus() if self.percpu else 1
        val = ctypes.create_string_buffer(self._stride(ncpus))
        with MAP_SYSCALLS.guard():
            ret = self.lib.lib.bpf_map_lookup_elem(self.fd, key, val)
        return val.raw if ret == 0 else None

    def lookup_and_delete(self, key: bytes) -> bytes | None:
        """The value, removed in the same step (hash maps, kernel >= 5.14: no update between the
        read and the delete is lost); where the kernel lacks it, a lookup then a delete."""
        ncpus = self.lib.num_possible_cpus() if self.percpu else 1
        val = ctypes.create_string_buffer(self._stride(ncpus))
        if self._atomic_delete:
            with MAP_SYSCALLS.guard():
                ret = self.lib.lib.bpf_map_lookup_and_delete_elem(self.fd, key, val)
            if ret == 0:
                return val.raw
            if ret not in (-errno.EINVAL, -ENOTSUPP, -errno.EOPNOTSUPP):
                return None  # -ENOENT: gone already
            self._atomic_delete = False  # this kernel has no lookup-and-delete for hash maps
        raw = self.lookup(key)
        if raw is not None:
            self.delete(key)
        return raw

    def delete(self, key: bytes) -> bool:
        with MAP_SYSCALLS.guard():
            return self.lib.lib.bpf_map_delete_elem(self.fd, key) == 0

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        with MAP_SYSCALLS.guard():
            ret = self.lib.lib.bpf_map_update_elem(self.fd, key, value, flags)
        if ret:
            raise LibbpfError(f"{self.name}: update failed: {errno_message(ret)}")

    def percpu_slots(self, raw: bytes) -> Iterator[bytes]:
        """Split a per-CPU value into one slot per possible CPU."""
        step = _round8(self.value_size)
        for off in range(0, len(raw), step):
            yield raw[off : off + self.value_size]
