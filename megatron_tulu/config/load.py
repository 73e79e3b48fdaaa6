"""Compose Hydra configs into typed dataclasses (for CLI commands and tests).

``examples/*.py`` use ``@hydra.main`` on the same ``hydra_conf/`` tree; both paths end in
:func:`to_dataclass`, so overrides such as ``parallel.tp=2`` behave identically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from megatron_tulu.config.schema import DPORunConfig, RLVRRunConfig, RunConfig, SFTRunConfig

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


def to_dataclass(cfg: DictConfig | dict[str, Any], schema: type[T] = RunConfig) -> T:  # type: ignore[assignment]
    """Validate ``cfg`` against the structured ``schema`` (unknown keys and bad types are errors)."""
    merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def load_config(
    overrides: list[str] | None = None, config_name: str = "config", schema: type[T] = RunConfig
) -> T:  # type: ignore[assignment]
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose(config_name=config_name, overrides=list(overrides or []))
    return to_dataclass(cfg, schema)
