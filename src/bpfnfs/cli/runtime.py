"""Process-wide settings of the configuration: debug logging, the warning for keys
whose capability is not built yet, and pprof.enable's stack dump server."""

from __future__ import annotations

import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bpfnfs.agent import stderr_log
from bpfnfs.config import Config, ConfigError, listen_address

# key path -> (is it set, what is not built yet); one warning line each, never silent.
_UNBUILT = (
    ("output.type", lambda c: c.output.type == "kafka", "Kafka output is not built; reports go to stdout"),
    (
        "output.file.path",
        lambda c: c.output.type == "file" and not c.output.file.path,
        "output.type file needs a path; reports go to stdout",
    ),
    (
        "output.otlp",
        lambda c: bool(c.output.otlp.endpoint) and not c.otlp_spans,
        "OTLP output needs output.type otlp",
    ),
    (
        "output.kafka",
        lambda c: bool(c.output.kafka.brokers or c.output.kafka.topic),
        "Kafka output is not built",
    ),
    ("filter.func", lambda c: bool(c.filter.func), "custom function probes are not built yet"),
    ("filter.struct", lambda c: bool(c.filter.struct), "custom function probes are not built yet"),
    ("probing.all_kmods", lambda c: c.probing.all_kmods, "custom function probes are not built yet"),
    ("probing.skip_attach", lambda c: c.probing.skip_attach, "custom function probes are not built yet"),
    ("probing.add_funcs", lambda c: bool(c.probing.add_funcs), "custom function probes are not built yet"),
)


def unbuilt(cfg: Config) -> list[str]:
    """One line per set key whose capability is not built yet."""
    out: list[str] = []
    for key, is_set, what in _UNBUILT:
        if is_set(cfg):
            out.append(f"{key}: {what}; the setting is accepted and has no effect")
    return out


def warn_unbuilt(cfg: Config) -> None:
    for line in unbuilt(cfg):
        stderr_log(f"warning: {line}")


def set_debug(on: bool) -> None:
    """features.debug: libbpf's own log (debug level) on stderr as it comes, and the
    whole verifier log of a program the kernel rejects in the error."""
    from bpfnfs.loader.libbpf import LibbpfError, libbpf

    try:
        lib = libbpf()
    except LibbpfError:
        return  # preflight says why
    lib.debug = on
    lib.echo = (lambda line: stderr_log(f"libbpf: {line}")) if on else None


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.split("?")[0] not in ("/debug/stacks", "/debug/pprof/goroutine"):
            self.send_error(404, "try /debug/stacks")
            return
        names = {t.ident: t.name for t in threading.enumerate()}
        parts = []
        for ident, frame in sys._current_frames().items():
            parts.append(
                f"thread {names.get(ident, '?')} ({ident}):\n" + "".join(traceback.format_stack(frame))
            )
        body = "\n".join(parts).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class StackServer:
    """pprof.enable: every thread's stack at /debug/stacks (the Python side of the
    original's net/http/pprof)."""

    def __init__(self, listen: str) -> None:
        host, port = listen_address(listen)
        try:
            self.httpd = ThreadingHTTPServer((host, port), _Handler)
        except OSError as e:
            raise ConfigError(f"pprof.listen {listen}: {e.strerror}") from None
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="bpfnfs-pprof", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
