"""Checkpoints in safetensors (never pickle) and self-contained ``model.py`` files.

Supernet checkpoints carry the space they were built from, so ``load_supernet`` needs nothing
else; standalone checkpoints carry the arch's canonical text. Every file is written through a
temporary file and ``os.replace``, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch
from torch import nn

from hyctas_dsl.language.ast import Arch
from hyctas_dsl.language.errors import Diagnostic, HyctasError
from hyctas_dsl.fileio import atomic_path, write_text_atomic
from hyctas_dsl.language.printer import dumps

__all__ = [
    "SUPERNET_FORMAT",
    "MODEL_FORMAT",
    "save_supernet",
    "load_supernet",
    "save_model",
    "load_model",
    "load_model_arch",
    "write_python",
    "read_metadata",
]

SUPERNET_FORMAT = "hyctas-supernet-1"
MODEL_FORMAT = "hyctas-model-1"
PathLike = Union[str, os.PathLike]


def _err(path: PathLike, msg: str, hint: str | None = None) -> HyctasError:
    # HY409: the CLI reports it in one line and exits 2 (an unreadable file).
    return HyctasError([Diagnostic("HY409", msg, None, hint, str(path))])


def _save_atomic(tensors: dict, path: PathLike, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def read_metadata(path: PathLike, fmt: str | None = None) -> dict[str, str]:
    """The metadata of a hyctas safetensors file; HY409 when it is missing, not safetensors,
    or (with ``fmt``) not of that format."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise _err(path, "no such file" if not p.exists() else "not a file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise _err(path, f"not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None
    if fmt is not None and meta.get("format") != fmt:
        found = meta.get("format") or "no hyctas format tag"
        raise _err(path, f"not a {fmt} checkpoint (found {found})",
                   "supernets load with load_supernet / --supernet, standalone models with load_model")
    return meta


def _load_tensors(path: PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:
        raise _err(path, f"damaged checkpoint ({str(e).splitlines()[0][:120]})") from None


def _load_into(model: nn.Module, tensors: dict, path: PathLike, what: str) -> None:
    want = model.state_dict()
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    bad = sorted(k for k in set(want) & set(tensors) if tuple(want[k].shape) != tuple(tensors[k].shape))
    if missing or extra or bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
        if bad:
            k = bad[0]
            parts.append(f"{len(bad)} of another shape (e.g. {k}: {tuple(tensors[k].shape)} vs {tuple(want[k].shape)})")
        raise _err(path, f"the tensors do not match the {what}: " + "; ".join(parts))
    model.load_state_dict(tensors, strict=True, assign=True)


def save_supernet(supernet, path: PathLike) -> None:
    """Write the supernet's parameters and BN buffers, with its space, class count and
    attention settings as metadata."""
    meta = {
        "format": SUPERNET_FORMAT,
        "space": dumps(supernet.space),
        "classes": str(supernet.classes),
        "attn_heads": str(supernet.attn_heads),
        "attn_ratio": repr(supernet.attn_ratio),
        "shared_classifier": str(int(supernet.shared_classifier)),
    }
    _save_atomic(supernet.state_dict(), path, meta)


def load_supernet(path: PathLike, classes: int | None = None):
    """The supernet stored at ``path`` (built on the meta device, then given the file's
    tensors: nothing is initialised twice). ``classes``: the class count the caller needs
    (e.g. the data set's); a different stored count is an HY408 error."""
    from hyctas_dsl.compiler.supernet import Supernet
    from hyctas_dsl.language.parser import parse

    meta = read_metadata(path, SUPERNET_FORMAT)
    try:
        spaces = parse(meta["space"], f"{path}[space]").spaces
        n = int(meta["classes"])
        heads = int(meta.get("attn_heads", 4))
        ratio = float(meta.get("attn_ratio", 0.5))
        shared = bool(int(meta.get("shared_classifier", "0")))  # files from before sharing: one per head
    except (KeyError, ValueError, HyctasError) as e:
        raise _err(path, f"damaged supernet metadata ({str(e).splitlines()[0][:120]})") from None
    if len(spaces) != 1:
        raise _err(path, "damaged supernet metadata (no space)")
    if classes is not None and classes != n:
        raise HyctasError([Diagnostic("HY408", f"the supernet in {path} was trained for {n} classes, not {classes}", None,
                                      "use the data set it was trained on, or train a new supernet")])
    with torch.device("meta"):
        sn = Supernet(spaces[0], n, heads, ratio, shared_classifier=shared)
    _load_into(sn, _load_tensors(path), path, f"supernet of space `{spaces[0].name}`")
    return sn


def save_model(model: nn.Module, arch: Arch, path: PathLike, classes: int | None = None) -> None:
    """Write a standalone network's weights with the arch's canonical text as metadata."""
    if classes is None:
        out = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
        classes = out.out_channels
    meta = {"format": MODEL_FORMAT, "arch": dumps(arch.model_copy(update={"meta": ()})), "classes": str(classes)}
    _save_atomic(model.state_dict(), path, meta)


def load_model_arch(path: PathLike) -> tuple[Arch, int]:
    """The arch and class count stored in a standalone checkpoint."""
    from hyctas_dsl.language.parser import parse

    meta = read_metadata(path, MODEL_FORMAT)
    try:
        archs = parse(meta["arch"], f"{path}[arch]").archs
        n = int(meta["classes"])
    except (KeyError, ValueError, HyctasError) as e:
        raise _err(path, f"damaged model metadata ({str(e).splitlines()[0][:120]})") from None
    if len(archs) != 1:
        raise _err(path, "damaged model metadata (no arch)")
    return archs[0], n


def load_model(path: PathLike, classes: int | None = None) -> nn.Module:
    """The standalone network stored at ``path`` (in train mode, as any fresh module)."""
    from hyctas_dsl.compiler.build import export

    arch, n = load_model_arch(path)
    if classes is not None and classes != n:
        raise HyctasError([Diagnostic("HY408", f"the model in {path} predicts {n} classes, not {classes}")])
    model = export(arch, classes=n)
    _load_into(model, _load_tensors(path), path, f"arch `{arch.name}`")
    return model


def write_python(arch: Arch, path: PathLike, supernet=None, model: nn.Module | None = None,
                 classes: int | None = None) -> tuple[Path, Path]:
    """Write ``path`` (a torch-only Python file defining ``Net`` and ``load()``) and its
    weights beside it (same stem, ``.safetensors``): those of ``model`` when given, else the
    supernet's slices, else a fresh initialisation. Returns both paths."""
    from hyctas_dsl.compiler.build import export, network_source
    from hyctas_dsl.compiler.lower import lower

    path = Path(path)
    if model is None:
        model = export(arch, supernet, classes)
    n = classes if classes is not None else (supernet.classes if supernet is not None else None)
    if n is None:
        n = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
    header = "# Generated by `hyctas compile`; edit freely, it no longer depends on hyctas."
    src = network_source(lower(arch, n), header)
    weights = path.with_suffix(".safetensors")
    meta = {"format": MODEL_FORMAT, "arch": dumps(arch.model_copy(update={"meta": ()})), "classes": str(n)}
    _save_atomic(model.state_dict(), weights, meta)
    write_text_atomic(path, src)
    return path, weights
