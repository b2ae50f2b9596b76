"""Typed configs: dataclasses are the schema, YAML files the recipes, dotted overrides on top.

Loading goes through OmegaConf structured configs, which reject unknown keys and values of the
wrong type. This module only turns its errors into one message that names the key and the file
the value came from, and checks that no required value (``MISSING``) is left unset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["MISSING", "ConfigError", "check_shard_keys", "load_config", "read_yaml", "to_yaml", "parse_overrides"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that does not fit its schema; the message names the key and where it came from."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, failing with the file name on a missing file or a syntax error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["optim.lr=3e-4", "model.layers=4"]`` -> nested dict; values are parsed as YAML scalars."""
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
    return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))


def _merge(base: DictConfig, data: dict[str, Any], source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, data)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{source}: key '{key}': {reason}") from None


def _apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Each ``dotted.key=value`` set on ``cfg`` in turn; a key may index a list
    (``data.sources.0.stream.shards=[DIR]``), which a merged nested dict cannot express."""
    parse_overrides(overrides)  # every item's form, checked before any is applied
    for item in overrides:
        key, _, text = item.partition("=")
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]))["value"]
        _check_list_indices(cfg, key)
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except (OmegaConfBaseException, IndexError, ValueError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"command line: key '{key}': {reason}") from None
    return cfg


def _check_list_indices(cfg: DictConfig, key: str) -> None:
    """A list index in ``key`` must name an existing entry (OmegaConf would try to create it)."""
    node, path = cfg, []
    for part in key.split("."):
        if isinstance(node, ListConfig) and part.isdigit() and int(part) >= len(node):
            raise ConfigError(f"command line: key '{key}': {'.'.join(path)} has {len(node)} entries "
                              f"(indices 0-{len(node) - 1}), got index {part}")
        path.append(part)
        try:
            node = node[int(part)] if isinstance(node, ListConfig) and part.isdigit() else node.get(part)
        except (OmegaConfBaseException, AttributeError):
            return  # an unknown key: OmegaConf's own error names it
        if not isinstance(node, DictConfig | ListConfig):
            return


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Build a ``schema`` dataclass from its defaults, then the YAML file, then the overrides.

    Fails before any work starts on an unknown key, a value of the wrong type or a required
    value left unset, with a :class:`ConfigError` naming the key and the file (or "command line").
    The dataclasses' ``__post_init__`` checks run last, on the resolved values.
    """
    cfg = OmegaConf.structured(schema)
    if path is not None:
        cfg = _merge(cfg, read_yaml(path), str(path))
    if overrides:
        cfg = _apply_overrides(cfg, list(overrides))
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        where = f" (set it in {path} or on the command line)" if path else ""
        raise ConfigError(f"required value(s) not set: {', '.join(missing)}{where}")
    try:
        return OmegaConf.to_object(cfg)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path or 'config'}: {err}") from None


def check_shard_keys(config: Any, keys: Iterable[str]) -> None:
    """Check the shard specs at the dotted ``keys`` of a loaded config, before any work starts.

    ``*`` stands for every item of a list (``data.sources.*.stream.shards``). A spec that leads to
    no shard (a missing path, a folder without shards, a remote URL:
    :func:`data_pipelines.shards.spec.check_shard_specs`) is a :class:`ConfigError` naming the key
    and the path. An empty list passes: whether one is needed is the recipe's business. Only for the
    command that is about to read the data: a checkpoint's config may name shards of another machine.
    """
    from data_pipelines.shards.spec import check_shard_specs

    for key in keys:
        for name, specs in _values_at(config, key.split("."), ""):
            try:
                check_shard_specs(specs)
            except ValueError as err:
                raise ConfigError(f"key '{name}': {err}") from None


def _values_at(node: Any, parts: list[str], prefix: str) -> Iterator[tuple[str, Any]]:
    """(full key, value) at the dotted path ``parts`` below ``node``; ``*`` walks every list item."""
    if not parts:
        yield prefix, node
        return
    head, rest = parts[0], parts[1:]
    if head == "*":
        for i, item in enumerate(node):
            yield from _values_at(item, rest, f"{prefix}[{i}]")
        return
    if not hasattr(node, head):
        raise ValueError(f"config key '{prefix or '<root>'}' ({type(node).__name__}) has no field {head!r}")
    yield from _values_at(getattr(node, head), rest, f"{prefix}.{head}" if prefix else head)


def to_yaml(config: Any) -> str:
    """The resolved config as YAML, in schema field order."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    return yaml.safe_dump(config, sort_keys=False)
