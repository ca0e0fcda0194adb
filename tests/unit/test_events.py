"""The event path (collect.events): ring records decoded once, in one place, into typed
records handed to every subscriber; paths into the file table; bounded queues count overflow."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from bpfnfs.collect import records as R
from bpfnfs.collect.events import EventPath, OpQueue, OpRecord, decode_ops, decode_paths


def _op(kind: int, vers: int, status: int = 0, proc: bytes = b"") -> bytes:
    hdr = (R.REC_OP, R.REC_OP_VERSION, R.OP_EVENT.size)
    return R.OP_EVENT.pack(
        *hdr,
        5,
        2_000_000,
        10,
        20,
        99,
        42,
        4096,
        0,
        0,
        0,
        100,
        101,
        55,
        7,
        3,
        0xABC,
        status,
        kind,
        vers,
        0,
        0,
        b"fio",
        proc,
    )


def _path(dev: int, fileid: int, leaf_first: list[bytes], truncated: bool = False) -> bytes:
    raw = b"".join(p + b"\0" for p in leaf_first)
    return R.PATH_EVENT.pack(
        R.REC_PATH,
        R.REC_PATH_VERSION,
        R.PATH_EVENT.size,
        fileid,
        dev,
        R.PATH_F_TRUNCATED if truncated else 0,
        len(raw),
        len(leaf_first),
        raw,
    )


def test_decode_ops_names_the_operation() -> None:
    vfs, rpc, odd = decode_ops(
        _op(R.OP_VFS, R.VFS_OPS.index("fsync"), status=-5) + _op(R.OP_RPC, 3, proc=b"COMMIT") + _op(9, 0)
    )
    assert (vfs.kind, vfs.op, vfs.errno, vfs.comm, vfs.bytes) == ("vfs", "fsync", "EIO", "fio", 4096)
    assert (rpc.kind, rpc.op, rpc.vers, rpc.queue_ns, rpc.rtt_ns, rpc.xid) == (
        "rpc",
        "COMMIT",
        3,
        10,
        20,
        0xABC,
    )
    assert rpc.errno is None and odd.kind == "unknown"


def test_decode_paths_leaf_first_to_rooted() -> None:
    got = decode_paths(_path(55, 42, [b"f", b"dir"]) + _path(55, 43, [b"deep"], truncated=True))
    assert got == {(55, 42): ("/dir/f", False), (55, 43): ("/deep", True)}


def test_queue_is_bounded_and_counts_overflow() -> None:
    q = OpQueue(maxlen=2)
    ops = decode_ops(_op(R.OP_VFS, 0) * 3)
    q(ops)
    assert len(q) == 2 and q.overflow == 1
    assert len(q.take(1)) == 1 and len(q.take()) == 1 and q.take() == []


class FakeRing:
    unknown_records = 0

    def __init__(self, chunks: list[dict[int, bytes]]) -> None:
        self.chunks = chunks
        self.closed = False

    def drain(self) -> dict[int, bytes]:
        return self.chunks.pop(0) if self.chunks else {k: b"" for k in R.RECORDS}

    def close(self) -> None:
        self.closed = True


def test_every_subscriber_gets_each_batch_and_paths_are_kept() -> None:
    ring = FakeRing(
        [
            {
                (R.REC_OP, R.REC_OP_VERSION): _op(R.OP_VFS, 0) * 2,
                (R.REC_PATH, R.REC_PATH_VERSION): _path(55, 42, [b"f"]) + _path(66, 1, [b"g"]),
            }
        ]
    )
    ep = EventPath()
    got: list[Sequence[OpRecord]] = []
    q = OpQueue()
    ep.subscribe(got.append)
    ep.subscribe(q)
    ep.ring = ring  # type: ignore[assignment]  (start() would also run the drain thread)
    ep.drain()
    ep.drain()  # an empty ring: nobody is called
    assert len(got) == 1 and len(got[0]) == 2 and len(q) == 2
    assert ep.paths[(55, 42)] == ("/f", False)
    ep.forget_devs({66})
    assert set(ep.paths) == {(55, 42)}
    assert ep.paths_for({(55, 42)}) == {(55, 42): ("/f", False)}
    ep.close()
    assert ring.closed and ep.ring is None


def test_sink_sorts_by_kind_and_version_and_counts_the_rest() -> None:
    """The C sink (ringbuf/sink.c) as libbpf calls it: records go to the buffer of their
    header's (kind, version); another version, a wrong size or a short record is counted."""
    from bpfnfs.ringbuf import _Sink, _sink_library, _SinkBuf

    so = _sink_library()
    so.bpfnfs_sink_cb.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    sink = _Sink()
    mems = []
    for i, ((kind, version), size) in enumerate(R.RECORDS.items()):
        mems.append(ctypes.create_string_buffer(size * 4))
        sink.bufs[i] = _SinkBuf(ctypes.addressof(mems[-1]), size * 4, 0, size, kind | version << 16)
    sink.nbufs = len(R.RECORDS)

    def feed(rec: bytes) -> int:
        buf = ctypes.create_string_buffer(rec, len(rec))
        return so.bpfnfs_sink_cb(ctypes.byref(sink), buf, len(rec))

    op, path = _op(R.OP_VFS, 0), _path(55, 42, [b"f"])
    assert feed(op) == 0 and feed(path) == 0 and feed(op) == 0
    newer = R.REC_HDR.pack(R.REC_OP, R.REC_OP_VERSION + 1, len(op)) + op[R.REC_HDR.size :]
    assert feed(newer) == 0 and feed(op[:-8]) == 0 and feed(b"\x01\x00") == 0
    assert (sink.bufs[0].len, sink.bufs[1].len, sink.unknown) == (2 * len(op), len(path), 3)
    assert len(decode_ops(ctypes.string_at(sink.bufs[0].data, sink.bufs[0].len))) == 2
    feed(op), feed(op)
    assert feed(path) == -28  # the op buffer is full: stop the drain, nothing lost
