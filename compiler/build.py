"""Standalone networks: generated source -> a module class -> ``export``.

The network of an arch is defined once, as Python source (``lower.python_source``: the op
library of ``ops.py`` plus a ``Net`` class with one attribute per DAG node). ``export`` runs
that source and builds ``Net`` with fresh parameters of exactly the sliced shapes, copying the
supernet's slices when one is given; ``write_python`` writes the very same source to a file.
The classes live in a generated module (registered with ``linecache`` so that TorchScript and
``inspect`` can read their source), never referring to hyctas.
"""

from __future__ import annotations

import hashlib
import linecache
import re
import sys
import types

import torch
from torch import nn

from hyctas_dsl.language.ast import Arch
from hyctas_dsl.language.errors import Diagnostic, HyctasError

from hyctas_dsl.compiler.lower import Plan, lower, python_source
from hyctas_dsl.compiler.ops import ops_source

__all__ = ["network_source", "network_class", "load_source", "export", "copy_from_supernet"]

_MODULES: dict[str, types.ModuleType] = {}


def load_source(src: str, name: str = "net") -> types.ModuleType:
    """Execute generated source as a module (cached by content)."""
    digest = hashlib.sha1(src.encode()).hexdigest()[:16]
    if digest in _MODULES:
        return _MODULES[digest]
    modname = f"hyctas_generated_{re.sub(r'[^A-Za-z0-9_]', '_', name)}_{digest}"
    filename = f"<hyctas-generated {modname}>"
    mod = types.ModuleType(modname)
    mod.__file__ = filename
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    sys.modules[modname] = mod
    exec(compile(src, filename, "exec"), mod.__dict__)
    _MODULES[digest] = mod
    return mod


def network_source(plan: Plan, header: str = "") -> str:
    return python_source(plan, ops_source(), header)


def network_class(plan: Plan) -> type[nn.Module]:
    return load_source(network_source(plan), plan.arch.name).Net


def copy_from_supernet(model: nn.Module, plan: Plan, supernet) -> None:
    """Copy the supernet's slices (parameters and BN buffers) into a standalone ``model``."""
    from hyctas_dsl.compiler.supernet import slice_groups, slice_to

    by_attr = plan.by_attr()
    src = {n.attr: supernet.module_for(n.kind, n.key) for n in plan.nodes}
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            attr, local = name.split(".", 1)
            s = src[attr].get_parameter(local) if local in dict(src[attr].named_parameters()) else src[attr].get_buffer(local)
            t.copy_(slice_to(s, t.shape, slice_groups(by_attr[attr].cls, local)))


def export(arch: Arch, supernet=None, classes: int | None = None) -> nn.Module:
    """A standalone network for ``arch``: fresh parameters of exactly the sliced shapes, with
    the supernet's weights and BN statistics copied in when ``supernet`` is given. The module
    refers to no hyctas class; it scripts, traces, compiles and exports to ONNX."""
    from hyctas_dsl.compiler.supernet import check_structure

    if supernet is not None:
        supernet.check(arch, classes)
        classes = supernet.classes
    else:
        check_structure(arch)
        classes = 19 if classes is None else int(classes)
        if classes < 1:
            raise HyctasError([Diagnostic("HY408", f"class count must be positive, not {classes}")])
    plan = lower(arch, classes)
    model = network_class(plan)(classes)
    if supernet is not None:
        copy_from_supernet(model, plan, supernet)
    return model
