"""bpfnfs's configuration: one model (model.py) that flags, environment and the YAML
file land in (sources.py), with one precedence: flags > environment > file > defaults."""

from bpfnfs.config.model import (
    BY,
    COMM_MAX,
    COUNTING,
    DEFAULT_PORT,
    RESTART_KEYS,
    SORT,
    TIERS,
    Config,
    ConfigError,
    listen_address,
    parse_duration,
)
from bpfnfs.config.sources import Layers, changed, dump, load, with_restart_keys_kept

__all__ = [
    "BY",
    "COMM_MAX",
    "COUNTING",
    "DEFAULT_PORT",
    "RESTART_KEYS",
    "SORT",
    "TIERS",
    "Config",
    "ConfigError",
    "Layers",
    "changed",
    "dump",
    "listen_address",
    "load",
    "parse_duration",
    "with_restart_keys_kept",
]
