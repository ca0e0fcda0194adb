"""Where settings come from, merged into the one model (config/model.py) with one
precedence: flags > environment > file > defaults.

Every value remembers its source (flag, environment variable, FILE:LINE), so an
invalid one gets a single message naming the key path, the source, what was
expected and what was found."""

from __future__ import annotations

import contextlib
import difflib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from bpfnfs.config.model import Config, ConfigError

MAX_FILE_BYTES = 1 << 20  # a configuration is a few KiB; anything this big is a mistake
ENV_PREFIX = "BPFNFS_"
ENV_FILE = "BPFNFS_CONFIG"
# The original tool's environment variables.
ENV_ALIASES = {"PROC_PATH": ("collection", "proc"), "NODE_NAME": ("kubernetes", "node_name")}

KeyPath = tuple[str, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (yaml.v2 and PyYAML keep the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                ) from None
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first})", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _lines(node: yaml.Node, path: KeyPath, out: dict[KeyPath, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                p = (*path, str(k.value))
                out[p] = k.start_mark.line + 1
                _lines(v, p, out)


def parse_yaml(text: str, name: str) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """YAML text -> (mapping, key path -> line). Raises ConfigError naming the line."""
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"{name}: holds no settings (empty, or only comments)")
        lines: dict[KeyPath, int] = {}
        _lines(node, (), lines)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        raise ConfigError(f"{where}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.reader.ReaderError as e:
        raise ConfigError(
            f"{name}: character #x{e.character:04x} at offset {e.position} is not allowed in YAML"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: YAML error: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{name}: nested too deeply") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise ConfigError(f"{name}: {e}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(
            f"{name}: expected a mapping of sections (collection:, filter:, ...), got {_kind(data)}"
        )
    return data, lines


def read_file(path: str) -> tuple[dict[str, Any], dict[KeyPath, int], str]:
    """A config file ("-": stdin) -> (mapping, lines, display name)."""
    name = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            import sys

            raw = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        else:
            with open(path, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"config file {name}: {e.strerror or e}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"config file {name}: larger than {MAX_FILE_BYTES >> 20} MiB; not a configuration")
    nul = raw.find(b"\0")
    if nul >= 0:
        raise ConfigError(f"config file {name}: binary data (a NUL byte at offset {nul})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {name}: not UTF-8 text (byte {e.start})") from None
    data, lines = parse_yaml(text, name)
    return data, lines, name


def _kind(v: object) -> str:
    if v is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(v), f"a {type(v).__name__}"
    )


def env_layer(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[KeyPath, str]]:
    """BPFNFS_SECTION__KEY[__SUBKEY]=value, and the original's PROC_PATH and NODE_NAME."""
    data: dict[str, Any] = {}
    origin: dict[KeyPath, str] = {}
    items: list[tuple[KeyPath, str, str]] = [
        (path, env[name], name) for name, path in ENV_ALIASES.items() if name in env
    ]
    for name, value in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and "__" in name:
            path = tuple(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
            items.append((path, value, name))
    for path, value, name in items:
        if not all(path):
            continue
        v: Any = value
        if value[:1] in "[{":
            with contextlib.suppress(ValueError):  # else left as text; the model says what it expected
                v = json.loads(value)
        _set(data, path, v)
        origin[path] = f"environment {name}"
    return data, origin


def _set(data: dict[str, Any], path: KeyPath, value: Any) -> None:
    d = data
    for p in path[:-1]:
        nxt = d.get(p)
        if not isinstance(nxt, dict):
            nxt = d[p] = {}
        d = nxt
    d[path[-1]] = value


def merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: top's values win; mappings merge key by key."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def _paths(data: Mapping[str, Any], prefix: KeyPath = ()) -> Iterable[KeyPath]:
    for k, v in data.items():
        p = (*prefix, str(k))
        yield p
        if isinstance(v, Mapping):
            yield from _paths(v, p)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the key at loc (for "did you mean")."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field is not None else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _describe(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def format_errors(
    err: ValidationError,
    origin: Mapping[KeyPath, str],
    lines: Mapping[KeyPath, int] | None = None,
    located_only: bool = False,
) -> list[str]:
    """One line per error: "KEY.PATH (SOURCE): what was expected, got what"; a check across
    keys (no location) is its message alone, and left out with located_only."""
    out: list[str] = []
    for e in err.errors(include_url=False):
        if located_only and not e["loc"]:
            continue
        loc = tuple(str(x) for x in e["loc"])
        # pydantic appends the union branch or "function-after[...]" to some locations
        loc = tuple(p for p in loc if not p.startswith(("function-", "constrained-")))
        key = ".".join(loc) or "(top level)"
        src = origin.get(loc) or next(
            (origin[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in origin), ""
        )
        where = f" ({src})" if src else ""
        typ = e["type"]
        if typ == "extra_forbidden":
            model = _model_at(loc)
            known = list(model.model_fields) if model is not None else []
            close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
            hint = f"; did you mean {'.'.join((*loc[:-1], close[0]))!r}?" if close else ""
            choices = f" (known: {', '.join(known)})" if known and not close else ""
            out.append(f"{key}{where}: unknown key{hint}{choices}")
            continue
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
            if not loc:
                out.append(msg)
                continue
        elif "input" in e and typ not in ("missing",):
            msg = f"{msg[0].lower()}{msg[1:]}, got {_describe(e['input'])}"
        out.append(f"{key}{where}: {msg}")
    return out


class Layers:
    """The sources of one configuration, kept so that SIGHUP can re-read the file."""

    def __init__(
        self,
        flags: Mapping[str, Any] | None = None,
        flag_names: Mapping[KeyPath, str] | None = None,
        file: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.flags = dict(flags or {})
        self.flag_names = dict(flag_names or {})
        self.env = dict(os.environ if env is None else env)
        self.file = file if file is not None else (self.env.get(ENV_FILE) or None)

    def build(self) -> Config:
        """Read the file (if any) and validate everything; ConfigError lists every problem."""
        origin: dict[KeyPath, str] = {}
        data: dict[str, Any] = {}
        lines: dict[KeyPath, int] = {}
        if self.file is not None:
            fdata, lines, name = read_file(self.file)
            data = fdata
            src = "from BPFNFS_CONFIG" if self.file == self.env.get(ENV_FILE) else ""
            for p in _paths(fdata):
                origin[p] = f"{name}:{lines[p]}" if p in lines else name
            if src:
                origin = {p: f"{o} {src}" for p, o in origin.items()}
        edata, eorigin = env_layer(self.env)
        data = merge(data, edata)
        origin.update(eorigin)
        data = merge(data, self.flags)
        for p in _paths(self.flags):
            if p in self.flag_names:
                origin[p] = self.flag_names[p]
        try:
            return Config.model_validate(data)
        except ValidationError as e:
            raise ConfigError("\n".join(format_errors(e, origin, lines))) from None


def load(
    flags: Mapping[str, Any] | None = None,
    flag_names: Mapping[KeyPath, str] | None = None,
    file: str | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[Config, Layers]:
    layers = Layers(flags, flag_names, file, env)
    return layers.build(), layers


def dump(cfg: Config) -> str:
    """The effective configuration as YAML that `config check` and `--config` accept back."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=False)


def changed(old: Config, new: Config) -> list[str]:
    """Key paths whose values differ."""
    a, b = _flat(old.model_dump(mode="json")), _flat(new.model_dump(mode="json"))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def with_restart_keys_kept(old: Config, new: Config, keys: Iterable[str]) -> tuple[Config, list[str]]:
    """new, with every key in `keys` (dotted) set back to old's value; and the ones that changed."""
    moved = [k for k in changed(old, new) if any(k == r or k.startswith(r + ".") for r in keys)]
    if not moved:
        return new, []
    data = new.model_dump()
    olddata = old.model_dump()
    for k in moved:
        parts = k.split(".")
        src, dst = olddata, data
        for p in parts[:-1]:
            src, dst = src[p], dst[p]
        dst[parts[-1]] = src[parts[-1]]
    return Config.model_validate(data), moved


__all__ = ["ENV_FILE", "Layers", "changed", "dump", "format_errors", "load", "parse_yaml", "read_file"]
