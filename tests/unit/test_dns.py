"""enrich.dns: the server name/address cache that never blocks the collection path.

Resolvers are injected fakes, the clock is a fake one the test moves by hand; the
real threads run, so each test waits for the fake resolver to be called or for the
cache to go idle before it looks at the outcome."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfnfs.enrich.dns import DnsCache, NotFound, parse_server, resolve_address_of

WAIT = 5.0  # seconds a test waits for a background thread at most (it is never close)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Fake:
    """A resolver: answers from a table (None: not found), or raises, or blocks until released."""

    def __init__(self, table: dict[str, str | None] | None = None) -> None:
        self.table = dict(table or {})
        self.calls: list[str] = []
        self.called = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.raises: BaseException | None = None
        self.on_call: Callable[[], None] | None = None

    def hang(self) -> None:
        self.release.clear()
        self.called.clear()

    def __call__(self, q: str) -> str | None:
        self.calls.append(q)
        self.called.set()
        if self.on_call:
            self.on_call()
        self.release.wait()
        if self.raises is not None:
            raise self.raises
        return self.table.get(q)


def _cache(
    fwd: Fake | None = None, rev: Fake | None = None, clock: Clock | None = None, **kw: float
) -> DnsCache:
    return DnsCache(
        clock=clock or Clock(),
        resolve_name=fwd or Fake({"nfs-server": "10.0.2.15"}),
        resolve_addr=rev or Fake({"10.0.2.15": "nfs-server", "fd00::1": "nfs6"}),
        **kw,  # type: ignore[arg-type]
    )


def _settled(c: DnsCache) -> None:
    assert c.wait_idle(WAIT)


def test_address_gets_its_name_in_the_background() -> None:
    c = _cache()
    assert c.lookup("10.0.2.15") == (None, "10.0.2.15")  # unknown yet: queued
    _settled(c)
    assert c.lookup("10.0.2.15") == ("nfs-server", "10.0.2.15")
    s = c.stats()
    assert (s["lookups"], s["misses"], s["hits"], s["resolutions"], s["in_flight"]) == (2, 1, 1, 1, 0)
    c.close()


def test_name_gets_its_address() -> None:
    c = _cache()
    assert c.lookup("nfs-server") == ("nfs-server", None)
    _settled(c)
    assert c.lookup("nfs-server") == ("nfs-server", "10.0.2.15")
    assert c.lookup("NFS-Server.") == ("NFS-Server.", "10.0.2.15")  # the same entry, as written
    assert c.stats()["resolutions"] == 1
    c.close()


def test_ipv6_brackets_and_forms_share_one_entry() -> None:
    rev = Fake({"fd00::1": "nfs6"})
    c = _cache(rev=rev)
    assert c.lookup("[fd00::1]") == (None, "fd00::1")
    _settled(c)
    assert c.lookup("[fd00::1]") == ("nfs6", "fd00::1")
    assert c.lookup("fd00::1") == ("nfs6", "fd00::1")
    assert c.lookup("[FD00:0:0::1]") == ("nfs6", "fd00::1")
    assert rev.calls == ["fd00::1"]  # brackets stripped, one resolution
    c.close()


def test_lookup_never_blocks_on_a_hung_resolver_and_dedups() -> None:
    rev = Fake({"10.0.2.15": "nfs-server"})
    rev.hang()
    c = _cache(rev=rev)
    t0 = time.monotonic()
    for _ in range(100):
        assert c.lookup("10.0.2.15") == (None, "10.0.2.15")
    assert time.monotonic() - t0 < 0.5
    assert rev.called.wait(WAIT)
    assert c.stats()["in_flight"] == 1
    rev.release.set()
    _settled(c)
    assert rev.calls == ["10.0.2.15"]  # one in flight per server, however often it is asked
    assert c.lookup("10.0.2.15") == ("nfs-server", "10.0.2.15")
    c.close()


def test_distinct_servers_resolve_separately() -> None:
    rev = Fake({"10.0.0.1": "a", "10.0.0.2": "b"})
    c = _cache(rev=rev)
    c.lookup("10.0.0.1")
    c.lookup("10.0.0.2")
    c.lookup("10.0.0.1")
    _settled(c)
    assert sorted(rev.calls) == ["10.0.0.1", "10.0.0.2"]
    assert c.lookup("10.0.0.2") == ("b", "10.0.0.2")
    c.close()


def test_ttl_expiry_refreshes_and_keeps_the_stale_answer() -> None:
    clock = Clock()
    rev = Fake({"10.0.2.15": "old"})
    c = _cache(rev=rev, clock=clock, ttl=10.0)
    c.lookup("10.0.2.15")
    _settled(c)
    clock.t += 9.0
    assert c.lookup("10.0.2.15") == ("old", "10.0.2.15")
    assert len(rev.calls) == 1  # still fresh
    clock.t += 2.0
    rev.table["10.0.2.15"] = "new"
    rev.hang()
    assert c.lookup("10.0.2.15") == ("old", "10.0.2.15")  # expired: stale answer, refresh queued
    assert rev.called.wait(WAIT)
    for _ in range(5):
        assert c.lookup("10.0.2.15") == ("old", "10.0.2.15")  # never flaps to None meanwhile
    assert c.stats()["stale"] == 6 and c.stats()["in_flight"] == 1
    rev.release.set()
    _settled(c)
    assert c.lookup("10.0.2.15") == ("new", "10.0.2.15")
    assert len(rev.calls) == 2
    c.close()


def test_transient_failure_keeps_the_last_good_answer() -> None:
    clock = Clock()
    rev = Fake({"10.0.2.15": "nfs-server"})
    c = _cache(rev=rev, clock=clock, ttl=10.0, negative_ttl=3.0)
    c.lookup("10.0.2.15")
    _settled(c)
    clock.t += 11.0
    rev.raises = OSError("resolver down")
    c.lookup("10.0.2.15")
    _settled(c)
    assert c.lookup("10.0.2.15") == ("nfs-server", "10.0.2.15")
    assert c.stats()["failures"] == {"timeout": 0, "not_found": 0, "error": 1}
    clock.t += 2.0
    c.lookup("10.0.2.15")
    assert len(rev.calls) == 2  # the failure is kept for negative_ttl
    clock.t += 2.0
    rev.raises = None
    c.lookup("10.0.2.15")
    _settled(c)
    assert len(rev.calls) == 3
    c.close()


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (None, "not_found"),
        (NotFound("x"), "not_found"),
        (socket.herror(1, "Unknown host"), "not_found"),
        (socket.herror(2, "Host name lookup failure"), "error"),  # TRY_AGAIN: keeps the last answer
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "not_found"),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), "error"),
        (ValueError("embedded null byte"), "error"),
    ],
)
def test_negative_caching_and_failure_reasons(outcome: BaseException | None, reason: str) -> None:
    clock = Clock()
    rev = Fake({})
    rev.raises = outcome
    c = _cache(rev=rev, clock=clock, negative_ttl=30.0)
    c.lookup("10.9.9.9")
    _settled(c)
    for _ in range(3):
        assert c.lookup("10.9.9.9") == (None, "10.9.9.9")
    assert len(rev.calls) == 1  # cached negative
    failures = c.stats()["failures"]
    assert failures[reason] == 1 and sum(failures.values()) == 1
    clock.t += 31.0
    c.lookup("10.9.9.9")
    _settled(c)
    assert len(rev.calls) == 2  # retried after negative_ttl
    c.close()


def test_not_found_drops_an_old_answer() -> None:
    clock = Clock()
    rev = Fake({"10.0.2.15": "gone-soon"})
    c = _cache(rev=rev, clock=clock, ttl=10.0)
    c.lookup("10.0.2.15")
    _settled(c)
    clock.t += 11.0
    del rev.table["10.0.2.15"]
    c.lookup("10.0.2.15")
    _settled(c)
    assert c.lookup("10.0.2.15") == (None, "10.0.2.15")
    c.close()


def test_timeout_is_counted_once_and_the_late_answer_kept() -> None:
    clock = Clock()
    rev = Fake({"10.0.0.1": "slow", "10.0.0.2": "quick"})
    rev.hang()
    c = _cache(rev=rev, clock=clock, timeout=2.0, workers=1)
    c.lookup("10.0.0.1")
    assert rev.called.wait(WAIT)
    clock.t += 3.0
    assert c.lookup("10.0.0.1") == (None, "10.0.0.1")
    s = c.stats()
    assert s["failures"]["timeout"] == 1 and s["in_flight"] == 1 and s["stuck_threads"] == 1
    # The only worker is stuck: a replacement resolves the other server meanwhile.
    rev.table["10.0.0.2"] = "quick"
    orig = rev.release
    rev.release = threading.Event()
    rev.release.set()
    c.lookup("10.0.0.2")
    deadline = time.monotonic() + WAIT
    while c.lookup("10.0.0.2")[0] is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert c.lookup("10.0.0.2") == ("quick", "10.0.0.2")
    clock.t += 100.0  # past negative_ttl: still one call in flight for the hung server, no second
    c.lookup("10.0.0.1")
    assert rev.calls.count("10.0.0.1") == 1
    orig.set()  # the hung call returns at last: its answer is stored, no second failure counted
    _settled(c)
    assert c.lookup("10.0.0.1") == ("slow", "10.0.0.1")
    s = c.stats()
    assert s["failures"] == {"timeout": 1, "not_found": 0, "error": 0}
    assert s["stuck_threads"] == 0 and s["threads"] <= 1 + 1
    c.close()


def test_slow_call_seen_only_when_it_ends_counts_as_timeout() -> None:
    clock = Clock()
    rev = Fake({"10.0.2.15": "nfs-server"})
    rev.on_call = lambda: setattr(clock, "t", clock.t + 5.0)  # the call "takes" 5 s
    c = _cache(rev=rev, clock=clock, timeout=2.0)
    c.lookup("10.0.2.15")
    _settled(c)
    assert c.lookup("10.0.2.15") == ("nfs-server", "10.0.2.15")
    assert c.stats()["failures"]["timeout"] == 1
    c.close()


def test_counters_and_invalid_servers() -> None:
    c = _cache()
    assert c.lookup("") == (None, None)
    assert c.lookup("not a host") == (None, None)
    assert c.lookup("10.1") == (None, None)  # not an address, and getaddrinfo must not read it as one
    c.lookup("10.0.2.15")
    _settled(c)
    c.lookup("10.0.2.15")
    c.lookup("10.0.2.15")
    s = c.stats()
    assert s["lookups"] == 6 and s["invalid"] == 3 and s["misses"] == 1 and s["hits"] == 2
    assert s["resolutions"] == 1 and s["entries"] == 1 and s["in_flight"] == 0
    c.close()


def test_configure_applies_to_cached_entries() -> None:
    clock = Clock()
    rev = Fake({"10.0.2.15": "nfs-server"})
    c = _cache(rev=rev, clock=clock, ttl=300.0)
    c.lookup("10.0.2.15")
    _settled(c)
    clock.t += 61.0
    c.lookup("10.0.2.15")
    assert len(rev.calls) == 1
    c.configure(ttl=60.0, negative_ttl=5.0, timeout=1.0)
    assert (c.ttl, c.negative_ttl, c.timeout) == (60.0, 5.0, 1.0)
    c.lookup("10.0.2.15")
    _settled(c)
    assert len(rev.calls) == 2
    c.close()


def test_close_while_a_lookup_hangs_returns_fast() -> None:
    rev = Fake({"10.0.2.15": "nfs-server"})
    rev.hang()
    c = _cache(rev=rev)
    c.lookup("10.0.2.15")
    assert rev.called.wait(WAIT)
    t0 = time.monotonic()
    c.close()
    assert time.monotonic() - t0 < 0.1
    assert c.lookup("10.0.0.9") == (None, "10.0.0.9")  # still answers, queues nothing
    assert rev.calls == ["10.0.2.15"]
    rev.release.set()


def test_process_exits_at_once_with_a_resolver_hung_forever() -> None:
    code = textwrap.dedent(
        """
        import threading
        from bpfnfs.enrich.dns import DnsCache
        called = threading.Event()
        def hang(q):
            called.set()
            threading.Event().wait()
        c = DnsCache(resolve_addr=hang, resolve_name=hang)
        c.lookup("10.0.2.15"); c.lookup("nfs-server")
        assert called.wait(5)
        print("ok", flush=True)
        """
    )
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
    assert time.monotonic() - t0 < 3.0  # interpreter start-up included; the exit itself is immediate


def test_parse_server() -> None:
    assert parse_server("10.0.2.15") == ("addr", "10.0.2.15")
    assert parse_server("[fd00::1]") == ("addr", "fd00::1")
    assert parse_server("fe80::1%eth0") == ("addr", "fe80::1%eth0")
    assert parse_server("nfs-server.example.") == ("name", "nfs-server.example.")
    for bad in ("", "[", "a..b", "-x", "x" * 64, "srv:/export", "10.0.2", "a b"):
        assert parse_server(bad) is None, bad


def test_default_forward_resolver_on_localhost() -> None:
    assert resolve_address_of("localhost") in ("127.0.0.1", "::1")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_lookup_never_raises(server: str) -> None:
    clock = Clock()
    boom = Fake({})
    boom.raises = RuntimeError("resolver bug")
    c = DnsCache(clock=clock, resolve_name=boom, resolve_addr=lambda q: "x")
    try:
        name, address = c.lookup(server)
        assert name is None or isinstance(name, str)
        assert address is None or isinstance(address, str)
        clock.t += 1e6
        c.lookup(server)
        c.stats()
    finally:
        c.close()
