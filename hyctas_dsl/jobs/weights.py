"""Trained weights for ``hyctas eval``, ``export`` and ``bench``: a model file or a
``hyctas train`` run directory, checked to belong to the arch, to predict the data's classes
and to be finite before anything runs on them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from hyctas_dsl.jobs.errors import ConfigError

__all__ = ["weights_path", "load_weights"]


def weights_path(weights: str) -> Path:
    """A model file, or a `hyctas train` run directory holding model.safetensors."""
    p = Path(weights)
    if p.is_dir():
        if (p / "model.safetensors").is_file():
            return p / "model.safetensors"
        if (p / "checkpoint.safetensors").is_file():
            raise ConfigError(f"{weights}: the run has not finished (no model.safetensors); continue it with --resume")
        raise ConfigError(f"{weights}: no model.safetensors in this directory")
    if not p.exists():
        raise ConfigError(f"{weights}: no such file")
    return p


def load_weights(weights: str, arch, classes: Optional[int] = None):
    """The network of ``arch`` with the weights of ``weights``; a file written for another
    arch or class count, or holding NaN or infinite values, is a one-line error (exit 2),
    never a shape traceback or a meaningless score."""
    from hyctas_dsl.language.api import canonical_key
    from hyctas_dsl.compiler.checkpoint import load_model, load_model_arch

    path = weights_path(weights)
    stored, n = load_model_arch(path)
    if canonical_key(stored) != canonical_key(arch):
        raise ConfigError(f"{weights}: these weights belong to arch `{stored.name}` ({canonical_key(stored)}), "
                          f"not to `{arch.name}` ({canonical_key(arch)})")
    if classes is not None and classes != n:
        raise ConfigError(f"{weights}: the model predicts {n} classes, but the data has {classes}")
    model = load_model(path).eval()
    from hyctas_dsl.jobs.rundir import is_finite

    bad = [k for k, v in model.state_dict().items() if not is_finite(v)]
    if bad:
        raise ConfigError(f"{weights}: {len(bad)} tensor(s) hold NaN or infinite values (first: {bad[0]}); "
                          "these weights come from a diverged run")
    return model, n
