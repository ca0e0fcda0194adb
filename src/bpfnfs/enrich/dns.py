"""Server names and addresses for the mounts' labels (`features.dns`), resolved off the collection path.

A mount names its server by address (the kernel's ``addr=`` option) or by the host name of its source.
Showing the other half needs DNS, and DNS can be slow or down: a report must never wait for it. So
`DnsCache.lookup()` only ever reads the cache and returns at once; what is missing or expired is queued
for a few background threads, and the answer shows up in a later interval. Answers are kept for `ttl`
seconds, failures for `negative_ttl`; an expired answer stays in use while its refresh runs, and a
refresh that fails for a transient reason (timeout, resolver error) keeps the last good answer, so labels
do not flap. A resolver call slower than `timeout` counts as a timeout failure (its late answer is still
stored) and its thread is replaced, so one hung lookup does not hold up the others.

The workers are daemon threads, not a `concurrent.futures.ThreadPoolExecutor`: the executor joins its
workers at interpreter exit, so a resolver call that hangs would keep the agent from exiting.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bpfnfs.collect.views import Report

Resolver = Callable[[str], str | None]

REASONS = ("timeout", "not_found", "error")  # failure reasons, the keys of stats()["failures"]
MAX_ENTRIES = 4096  # servers cached at most (mounts are far fewer; bounds the cache on odd input)
MAX_STUCK = 16  # timed-out calls whose thread is replaced at most (beyond that, new lookups queue)

_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_NOT_FOUND_EAI = {
    getattr(socket, n) for n in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY") if hasattr(socket, n)
}


class NotFound(LookupError):
    """Raised by a resolver when the name or address has no answer (the same as returning None)."""


def resolve_address_of(name: str) -> str | None:
    """Forward lookup: the first address getaddrinfo gives for `name` (system order, RFC 6724)."""
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return str(infos[0][4][0]) if infos else None


def resolve_name_of(address: str) -> str | None:
    """Reverse lookup (PTR): the host name of `address`. gethostbyaddr, not getnameinfo:
    CPython holds the GIL through getnameinfo, so a resolver that does not answer froze every
    thread for its whole timeout (seen in the lab: 10 s without a report)."""
    host = socket.gethostbyaddr(address)[0]
    return host.rstrip(".") or None


def parse_server(server: str) -> tuple[str, str] | None:
    """("addr", normalised address) or ("name", host name) for a server as a mount source gives it
    (``10.0.0.1``, ``fd00::1``, ``[fd00::1]``, ``nfs-server.example``); None for anything else."""
    s = server.strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    try:
        return "addr", str(ipaddress.ip_address(s))
    except ValueError:
        pass
    name = s[:-1] if s.endswith(".") else s
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(p) for p in name.split(".")):
        return None
    if name.replace(".", "").isdigit():
        return None  # all-numeric but not an address: getaddrinfo would take "10.1" as 10.0.0.1
    return "name", s


@dataclass
class _Job:
    key: str
    started: float | None = None  # clock time a worker called the resolver (None: still queued)
    timed_out: bool = False


@dataclass
class _Entry:
    kind: str  # "addr": the server is an address, resolve its name; "name": the other way round
    query: str  # what the resolver is given
    answer: str | None = None  # the last good answer (None: never, or not found)
    answered_at: float | None = None  # clock time of the last outcome (None: no outcome yet)
    failed: bool = False  # the last outcome was a failure (kept for negative_ttl)
    job: _Job | None = None  # the resolution in flight


class DnsCache:
    """Names for addresses and addresses for names, from a cache that a few daemon threads fill.

    `lookup()` never blocks and never raises. Resolvers are injectable (tests): `resolve_name`
    takes a host name and returns an address, `resolve_addr` takes an address and returns a host
    name; either returns None or raises `NotFound` (or socket.gaierror EAI_NONAME, socket.herror)
    when there is no answer; any other exception is an error.
    """

    def __init__(
        self,
        ttl: float = 300.0,
        negative_ttl: float = 30.0,
        timeout: float = 2.0,
        workers: int = 2,
        clock: Callable[[], float] = time.monotonic,
        resolve_name: Resolver = resolve_address_of,
        resolve_addr: Resolver = resolve_name_of,
    ) -> None:
        self.ttl, self.negative_ttl, self.timeout = float(ttl), float(negative_ttl), float(timeout)
        self.workers = max(1, int(workers))
        self._clock = clock
        self._resolve = {"name": resolve_name, "addr": resolve_addr}
        self._entries: dict[str, _Entry] = {}
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._alive = 0  # worker threads started and not exited
        self._stuck = 0  # of those, busy with a call that timed out
        self._closed = False
        self._seq = 0
        self.lookups = 0  # lookup() calls
        self.hits = 0  # answered from the cache: an outcome is known (fresh or stale, found or not)
        self.misses = 0  # no outcome yet for that server (first sight, or its first resolution still runs)
        self.stale = 0  # of the hits, past their TTL (a refresh is queued or running)
        self.invalid = 0  # server strings that are neither an address nor a host name (never resolved)
        self.resolutions = 0  # resolver calls started
        self.failures = dict.fromkeys(REASONS, 0)

    # ---- the collection side: never blocks ---------------------------------------------------

    def lookup(self, server: str) -> tuple[str | None, str | None]:
        """(name, address) of a server as it appears in a mount source; the half DNS has not
        answered (yet) is None. Never blocks: what is missing or expired is resolved in the
        background and shows up in a later call."""
        try:
            parsed = parse_server(server) if isinstance(server, str) else None
        except Exception:  # defensive: arbitrary input must never break a report
            parsed = None
        with self._cond:
            self.lookups += 1
            if parsed is None:
                self.invalid += 1
                return None, None
            kind, value = parsed
            now = self._clock()
            self._reap(now)
            key = f"{kind}:{value.lower().rstrip('.')}"  # one entry per host, however written
            e = self._entries.get(key)
            if e is None:
                self._bound()
                e = self._entries[key] = _Entry(kind, value)
            if e.answered_at is None:
                self.misses += 1
                stale = True
            else:
                self.hits += 1
                stale = now >= e.answered_at + (self.negative_ttl if e.failed else self.ttl)
                self.stale += stale
            if stale and e.job is None and not self._closed:
                self._submit(key, e)
            return (e.answer, value) if kind == "addr" else (value, e.answer)

    def stats(self) -> dict[str, Any]:
        """Counters (monotonic, for *_total metrics) and gauges (in_flight, entries, threads)."""
        with self._cond:
            self._reap(self._clock())
            return {
                "lookups": self.lookups,
                "hits": self.hits,
                "misses": self.misses,
                "stale": self.stale,
                "invalid": self.invalid,
                "resolutions": self.resolutions,
                "failures": dict(self.failures),
                "in_flight": sum(1 for e in self._entries.values() if e.job is not None),
                "entries": len(self._entries),
                "threads": self._alive,
                "stuck_threads": self._stuck,
            }

    def configure(
        self, ttl: float | None = None, negative_ttl: float | None = None, timeout: float | None = None
    ) -> None:
        """Live reload: new TTLs apply to what is cached already (expiry is computed at lookup)."""
        with self._cond:
            if ttl is not None:
                self.ttl = float(ttl)
            if negative_ttl is not None:
                self.negative_ttl = float(negative_ttl)
            if timeout is not None:
                self.timeout = float(timeout)

    update_ttl = configure

    def close(self) -> None:
        """Stop the workers without waiting for them (a hung call's thread is a daemon and
        is abandoned). Lookups still answer from the cache afterwards but resolve nothing."""
        with self._cond:
            self._closed = True
            for j in self._queue:  # never started: no longer in flight
                e = self._entries.get(j.key)
                if e is not None and e.job is j:
                    e.job = None
            self._queue.clear()
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or running (tests, one-shot reports); False on timeout."""
        end = time.monotonic() + timeout
        with self._cond:
            while any(e.job is not None for e in self._entries.values()):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def __enter__(self) -> DnsCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals (under self._cond) ----------------------------------------------------------

    def _submit(self, key: str, e: _Entry) -> None:
        e.job = _Job(key)
        self._queue.append(e.job)
        if self._alive - self._stuck < self.workers:
            self._spawn()
        self._cond.notify()

    def _spawn(self) -> None:
        self._alive += 1
        self._seq += 1
        try:
            threading.Thread(target=self._work, name=f"bpfnfs-dns-{self._seq}", daemon=True).start()
        except RuntimeError:  # no more threads (or interpreter shutting down): lookups stay queued
            self._alive -= 1

    def _reap(self, now: float) -> None:
        """Count the calls running past the timeout as failures, and replace their threads."""
        for e in self._entries.values():
            j = e.job
            if j is None or j.timed_out or j.started is None:
                continue
            if now - j.started >= self.timeout:
                j.timed_out = True
                self.failures["timeout"] += 1
                e.failed, e.answered_at = True, now
                self._stuck += 1
                if self._alive - self._stuck < self.workers and self._stuck <= MAX_STUCK and not self._closed:
                    self._spawn()

    def _bound(self) -> None:
        if len(self._entries) < MAX_ENTRIES:
            return
        idle = [k for k, e in self._entries.items() if e.job is None]
        idle.sort(key=lambda k: self._entries[k].answered_at or 0.0)
        for k in idle[: max(1, len(self._entries) // 4)]:
            del self._entries[k]

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    self._alive -= 1
                    return
                job = self._queue.popleft()
                e = self._entries.get(job.key)
                if e is None or e.job is not job:
                    continue
                job.started = started = self._clock()
                self.resolutions += 1
                resolve, query = self._resolve[e.kind], e.query
            answer: str | None = None
            reason: str | None = None
            try:
                answer = resolve(query)
                if answer is None:
                    reason = "not_found"
            except NotFound:
                reason = "not_found"
            except socket.herror as ex:  # h_errno: HOST_NOT_FOUND, NO_DATA are answers; TRY_AGAIN is not
                reason = "not_found" if ex.args and ex.args[0] in (1, 4) else "error"
            except socket.gaierror as ex:
                reason = "not_found" if ex.errno in _NOT_FOUND_EAI else "error"
            except Exception:
                reason = "error"
            with self._cond:
                now = self._clock()
                if not job.timed_out and now - started >= self.timeout:
                    job.timed_out = True  # slow but never seen running by _reap
                    self.failures["timeout"] += 1
                    self._stuck += 1
                was_timed_out = job.timed_out
                if reason is not None and not was_timed_out:
                    self.failures[reason] += 1
                if e.job is job:
                    e.job = None
                    if reason is None:
                        e.answer, e.failed = str(answer), False
                    else:
                        if reason == "not_found":
                            e.answer = None  # a definite "no such name": drop the old answer
                        e.failed = True  # transient failures keep the last good answer
                    e.answered_at = now
                if was_timed_out:
                    self._stuck -= 1
                self._cond.notify_all()  # wait_idle
                if self._closed or self._alive - self._stuck > self.workers:
                    self._alive -= 1
                    return


def with_dns(report: Report, cache: DnsCache | None) -> Report:
    """The report with each mount's server_name and server_address filled in from the cache
    (never waits for DNS; unchanged without a cache)."""
    if cache is None:
        return report
    mounts = []
    for m in report.mounts:
        mounted = parse_server(m.server_host) if m.server_host else None
        kernel = parse_server(m.server) if m.server else None
        if mounted is not None and mounted[0] == "name":
            # Mounted by name: that name, and the address the client uses (addr=), else DNS's.
            name = mounted[1]
            address = kernel[1] if kernel is not None and kernel[0] == "addr" else cache.lookup(name)[1]
        else:
            name, address = cache.lookup(m.server) if m.server else (None, None)
        mounts.append(replace(m, server_name=name, server_address=address))
    return replace(report, mounts=mounts)
