"""`python -m orchestrator [+experiment=NAME] [key=value ...]` — the thin Hydra entry.

Composes the config (schema defaults + conf/ YAML + overrides), then hands it to `runner.run`.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .config import ConfigError, register, to_config

register()


def _point_from_overrides() -> str:
    """Under multirun, name the sweep point after this job's leap.* overrides."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return ""
    if hc.mode is None or hc.mode.name != "MULTIRUN":
        return ""
    items = sorted(o.split("=", 1) for o in hc.overrides.task if o.lstrip("+~").startswith("leap."))
    return ",".join(f"{k.lstrip('+~').removeprefix('leap.')}={v}" for k, v in items)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(dcfg: DictConfig) -> None:
    from .runner import run

    try:
        cfg = to_config(dcfg)
        if not cfg.point and not cfg.sweep:
            cfg.point = _point_from_overrides()
        run(cfg)
    except ConfigError as exc:
        logging.getLogger("orchestrator").error("config error: %s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
