"""Run records: every run writes what is needed to repeat it (config, seed, package
versions, device), as JSON written atomically (through :mod:`hyctas_dsl.fileio`)."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from hyctas_dsl.fileio import write_text_atomic

__all__ = ["write_json", "read_json", "environment"]


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def environment(device: Any = None) -> dict[str, Any]:
    """Package versions, Python, platform and device, recorded beside every result."""
    versions = {}
    for pkg in ("hyctas", "torch", "numpy", "pymoo", "lark", "pydantic", "networkx", "scikit-learn"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "packages": versions,
    }
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        if device is not None:
            env["device"] = str(device)
            if torch.device(device).type == "cuda":
                env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    except ImportError:  # pragma: no cover - torch is present wherever this runs
        pass
    return env
