"""Compose Hydra configs into typed dataclasses (for CLI commands and tests).

``examples/*.py`` use ``@hydra.main`` on the same ``hydra_conf/`` tree; both paths end in
:func:`to_dataclass`, so overrides such as ``parallel.tp=2`` behave identically.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from megatron_tulu.config.schema import DPORunConfig, RLVRRunConfig, RunConfig, SFTRunConfig
from megatron_tulu.errors import ConfigError

# Typed schemas that entry YAMLs list first in their defaults, so Hydra knows every field (an
# override of a field the YAML does not spell out still works; a misspelled one is an error).
SCHEMAS: dict[str, type] = {
    "run_schema": RunConfig,
    "sft_schema": SFTRunConfig,
    "dpo_schema": DPORunConfig,
    "rlvr_schema": RLVRRunConfig,
}
for _name, _schema in SCHEMAS.items():
    ConfigStore.instance().store(name=_name, node=_schema)

T = TypeVar("T")


def config_dir() -> Path:
    """``hydra_conf/`` of this checkout (override with MEGATRON_TULU_CONF)."""
    env = os.environ.get("MEGATRON_TULU_CONF")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "hydra_conf"


def _schema_type(annotation: Any) -> Any:
    """The dataclass inside ``X | None`` / ``Optional[X]``; the annotation itself otherwise."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return inner[0] if len(inner) == 1 else Any
    return annotation


def unknown_keys(cfg: Any, schema: type, prefix: str = "") -> list[tuple[str, list[str]]]:
    """Keys of ``cfg`` the dataclass ``schema`` does not have: ``[(dotted key, valid siblings)]``.

    Why: OmegaConf's merge into a structured config drops keys that Hydra added with ``+key=...``
    (and Hydra suggests the ``+`` for a misspelled key), so a typo would silently train with the
    default. Free-form fields (``dict[...]``, ``Any``) accept any key below them.
    """
    if not dataclasses.is_dataclass(schema) or not isinstance(cfg, DictConfig | dict):
        return []
    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    found: list[tuple[str, list[str]]] = []
    for key in cfg.keys() if isinstance(cfg, dict) else cfg.keys():
        dotted = f"{prefix}{key}"
        if key not in names:
            found.append((dotted, names))
            continue
        sub = cfg[key] if isinstance(cfg, dict) else cfg._get_node(key)
        if isinstance(sub, DictConfig | dict):
            found += unknown_keys(sub, _schema_type(hints[key]), dotted + ".")
    return found


def _unknown_key_error(key: str, valid: list[str], overrides: list[str]) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    close = difflib.get_close_matches(leaf, valid, n=1)
    source = next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == key), None)
    where = f"override {source!r}" if source else "the config files"
    hint = f"did you mean {parent}{close[0]}? " if close else ""
    return ConfigError(
        f"unknown config key {key} (from {where}): {hint}valid keys under "
        f"{parent.rstrip('.') or 'the root'}: {', '.join(valid)}"
    )


def _normalise(obj: Any) -> None:
    """Checks OmegaConf cannot express: ``checkpoint.resume`` is false | true | auto."""
    ckpt = getattr(obj, "checkpoint", None)
    if ckpt is None:
        return
    value = ckpt.resume
    text = str(value).strip().lower()
    if isinstance(value, bool) or text == "auto":
        ckpt.resume = value if isinstance(value, bool) else "auto"
    elif text in ("true", "false"):
        ckpt.resume = text == "true"
    else:
        raise ConfigError(f"checkpoint.resume={value!r}: use false, true or auto")


def to_dataclass(
    cfg: DictConfig | dict[str, Any], schema: type[T] = RunConfig, overrides: list[str] | None = None
) -> T:  # type: ignore[assignment]
    """Validate ``cfg`` against the structured ``schema`` (unknown keys and bad types are errors)."""
    unknown = unknown_keys(cfg, schema)
    if unknown:
        raise _unknown_key_error(*unknown[0], overrides or [])
    merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    obj = OmegaConf.to_object(merged)
    _normalise(obj)
    return obj  # type: ignore[return-value]


def load_config(
    overrides: list[str] | None = None, config_name: str = "config", schema: type[T] = RunConfig
) -> T:  # type: ignore[assignment]
    """Compose ``hydra_conf/<config_name>.yaml`` with ``overrides`` into ``schema``; a misspelled
    key is a :class:`ConfigError` naming it, with or without Hydra's ``+``."""
    from hydra.errors import ConfigCompositionException

    overrides = list(overrides or [])
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = compose(config_name=config_name, overrides=overrides)
    except ConfigCompositionException as exc:
        text = str(exc)
        if text.startswith("Could not override '"):
            key = text.split("'")[1]
            parent, _, _ = key.rpartition(".")
            node: Any = schema
            for part in parent.split(".") if parent else []:
                hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
                node = _schema_type(hints.get(part, Any))
            valid = [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []
            if valid and key.rsplit(".", 1)[-1] not in valid:
                raise _unknown_key_error(key, valid, overrides) from exc
        raise
    return to_dataclass(cfg, schema, overrides)
