"""Reading a config file: YAML in, a frozen AgentConfig out, or every problem by key path."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from anycast_agent.config.schema import AgentConfig, frozen_keys_changed
from anycast_agent.errors import ConfigError

log = logging.getLogger(__name__)


def _loc(loc: tuple[int | str, ...], data: Any) -> str:
    """A key path like services[web].targets[edge1].timeout, naming list items by their name."""
    out: list[str] = []
    node = data
    for part in loc:
        if isinstance(part, int):
            name = (
                node[part].get("name")
                if isinstance(node, list) and part < len(node) and isinstance(node[part], Mapping)
                else None
            )
            out[-1:] = [f"{out[-1] if out else ''}[{name if name else part}]"]
            node = node[part] if isinstance(node, list) and part < len(node) else None
        else:
            out.append(str(part))
            node = node.get(part) if isinstance(node, Mapping) else None
    return ".".join(out) or "(top level)"


def format_errors(exc: ValidationError, data: Any) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = _loc(loc, data)
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:  # cross-field checks name their own key path
            lines.append(msg)
            continue
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        bad = err.get("input")
        shown = "" if isinstance(bad, Mapping | list) or bad is None else f" (got {bad!r})"
        if shown and repr(bad) in msg:
            shown = ""
        lines.append(f"{path}: {msg}{shown}")
    return lines


MAX_CONFIG_BYTES = 1 << 20
MAX_NODES = 100_000  # YAML nodes once aliases are expanded ("billion laughs" goes far past)


def _expanded(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many nodes `node` stands for with every alias expanded (an alias is the very node
    of its anchor, so `memo` keeps this linear in the file's size)."""
    if id(node) not in memo:
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        memo[id(node)] = 1 + sum(_expanded(child, memo) for child in children)
    return memo[id(node)]


# libyaml's parser, which PyYAML's wheels carry: reading a 2,000-target file took 13 MB with
# the pure-Python one (its tokens and events are Python objects too), 8 MB with this one (the
# nodes alone), and part of it stays resident: 2.6-4.4 MB less agent RSS at that size.
# Same documents, same safe constructor.
if TYPE_CHECKING or yaml.__with_libyaml__:  # noqa: SIM108 - mypy types the first branch
    _Loader = yaml.CSafeLoader
else:  # a PyYAML built without libyaml
    _Loader = yaml.SafeLoader


class _StrictLoader(_Loader):
    """A safe loader that refuses duplicate keys and keys that are not strings."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is not a string", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: Path | str) -> AgentConfig:
    """Read, validate and freeze a config file; raise ConfigError listing every problem. Every
    failure is a ConfigError naming what is wrong, never another exception (R31)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the config file: {exc.strerror}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(str(path), [f"the file is {len(raw)} bytes, over {MAX_CONFIG_BYTES}"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text: byte {exc.start}: {exc.reason}"]) from None
    try:
        loader = _StrictLoader(text)  # refuses control characters already (a YAMLError)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    try:
        node = loader.get_single_node()
        if node is not None and (size := _expanded(node, {})) > MAX_NODES:
            raise ConfigError(str(path), [f"aliases expand to {size} YAML nodes, over {MAX_NODES}"])
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    except RecursionError:  # found by `make fuzz`: a few thousand `[` crashed the load
        raise ConfigError(str(path), ["not valid YAML: nested too deeply"]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(
            str(path), [f"the top level must be a mapping, got {type(data).__name__}"]
        )
    private = sorted(k for k in data if k.startswith("_"))
    if private:  # pydantic-settings would take `_env_file` and the like as its own options
        raise ConfigError(str(path), [f"{k}: unknown key" for k in private])
    try:
        config = AgentConfig(**data)
    except ValidationError as exc:
        raise ConfigError(str(path), format_errors(exc, data)) from None
    return config


def deprecations(config: AgentConfig) -> list[str]:
    """Keys that are accepted but do nothing any more, each with what to do instead."""
    if config.withdraw_on_exit is not None:
        return [
            "withdraw_on_exit is deprecated and does nothing (exit never withdraws): "
            "remove it; drain is the tool for taking a PoP out"
        ]
    return []


def reloadable(path: Path, running: AgentConfig) -> AgentConfig | list[str]:
    """The config at `path` if it may replace `running` while the agent runs; else every
    reason it may not."""
    try:
        new = load_config(path)
    except ConfigError as exc:
        return exc.problems
    for warning in deprecations(new):
        log.warning("%s: %s", path, warning)
    return frozen_keys_changed(running, new) or new
