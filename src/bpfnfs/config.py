"""The agent's configuration. The CLI builds one from flags; the YAML config file
(a later issue) will build the same object, so every consumer reads only this."""

from __future__ import annotations

from dataclasses import dataclass


class ConfigError(ValueError):
    """An invalid setting; str() names the setting and the accepted values."""


@dataclass(frozen=True)
class Config:
    interval: float = 1.0  # seconds between reports
    count: int | None = None  # stop after this many reports (None: until interrupted)
    json: bool = False  # one JSON document per interval instead of the table
    tier: str = "auto"  # auto | btf | tracefs
    all_ops: bool = False  # table: show every op, not only the ones that moved
    slow_ms: float | None = None  # per-op records for RPCs at least this slow (ring buffer)
    proc: str = "/proc"  # where to read mountinfo (a host /proc in a container)

    def __post_init__(self) -> None:
        if not (0.05 <= self.interval <= 3600):
            raise ConfigError(f"interval must be between 0.05 and 3600 seconds, got {self.interval}")
        if self.count is not None and self.count < 1:
            raise ConfigError(f"count must be at least 1, got {self.count}")
        if self.tier not in ("auto", "btf", "tracefs"):
            raise ConfigError(f"tier must be auto, btf or tracefs, got {self.tier!r}")
        if self.slow_ms is not None and self.slow_ms < 0:
            raise ConfigError(f"slow-ms must be >= 0, got {self.slow_ms}")
