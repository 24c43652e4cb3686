"""Standalone networks: generated source -> a module class -> ``export``.

The network of an arch is defined once, as Python source (``lower.python_source``: the op
library of ``ops.py`` plus a ``Net`` class with one attribute per DAG node). ``export`` runs
that source and builds ``Net`` with fresh parameters of exactly the sliced shapes, copying the
supernet's slices when one is given; ``write_python`` writes the very same source to a file.
The classes live in a generated module (registered with ``linecache`` so that TorchScript and
``inspect`` can read their source), never referring to hyctas.

``view_skeleton`` builds the weightless skeleton that a subnet view runs, from the same
definition, cheaply enough to build one per training step (see its docstring).
"""

from __future__ import annotations

import functools
import hashlib
import linecache
import re
import sys
import types
from collections import OrderedDict
from typing import Callable, NamedTuple

import torch
from torch import nn

from hyctas_dsl.language.ast import Arch
from hyctas_dsl.language.errors import Diagnostic, HyctasError

from hyctas_dsl.compiler.lower import Plan, forward_source, lower, python_source
from hyctas_dsl.compiler.ops import ops_source

__all__ = ["network_source", "network_class", "load_source", "export", "copy_from_supernet", "view_skeleton", "SkeletonTensor"]

_MODULES: dict[str, types.ModuleType] = {}


def load_source(src: str, name: str = "net") -> types.ModuleType:
    """Execute generated source as a module (cached by content)."""
    digest = hashlib.sha1(src.encode()).hexdigest()[:16]
    if digest not in _MODULES:
        _MODULES[digest] = _execute(src, f"hyctas_generated_{re.sub(r'[^A-Za-z0-9_]', '_', name)}_{digest}")
    return _MODULES[digest]


def _execute(src: str, modname: str) -> types.ModuleType:
    filename = f"<hyctas-generated {modname}>"
    mod = types.ModuleType(modname)
    mod.__file__ = filename
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    sys.modules[modname] = mod
    exec(compile(src, filename, "exec"), mod.__dict__)
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


# -- subnet-view skeletons ---------------------------------------------------------------------
# Supernet training builds one view per step. Building its skeleton as export() builds a
# network (execute the arch's whole source, run Net.__init__ on the meta device) cost ~13 ms
# on the digits space, more than a forward: mostly nn.Conv2d / BatchNorm2d __init__ and
# reset_parameters for tensors that a view never owns, and a compile per arch (the source
# names the arch). A skeleton runs the same definition, built from cached pieces:
# - the op library (``ops_source``, the text every generated file embeds) is executed once;
# - ``Net.forward`` (``forward_source``) is compiled once per text: it names nodes and wiring,
#   not widths or ops, so archs of the same shape share it;
# - each node's module is a structural copy of a template built once per constructor call
#   (``NodePlan.ctor()``, the very expression of the node's line in ``Net.__init__``), its
#   parameters and buffers already removed. Copies share no mutable state (module dicts,
#   hook dicts, lists are copied), so two live views never interfere;
# - a template miss runs the op's own __init__, with its nn.Conv2d / BatchNorm2d copied from
#   cached ones (``_Leaves``): the first few hundred views of a run are mostly misses.


class _LRU(OrderedDict):
    """A bounded cache: a long search meets ever new archs, a space only so many shapes."""

    def __init__(self, size: int, evict: Callable | None = None):
        super().__init__()
        self.size, self.evict = size, evict

    def fetch(self, key, make: Callable):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        if len(self) > self.size:
            _old, dropped = self.popitem(last=False)
            if self.evict is not None:
                self.evict(dropped)
        return value


class SkeletonTensor(NamedTuple):
    """One parameter or buffer a node's module would own: where it sits in the module, its
    shape, and whether it is a parameter (else a buffer)."""

    name: str  # dotted name inside the node's module, e.g. ``conv.bn.running_mean``
    path: tuple[str, ...]  # submodule names down to the module that holds it
    leaf: str
    shape: tuple[int, ...]
    is_param: bool


class _Template(NamedTuple):
    """A node's module without tensors, flattened for copying: every module with its path
    (parents first) and the names of its attributes that are dicts, lists or sets."""

    modules: tuple[tuple[tuple[str, ...], nn.Module, tuple[str, ...]], ...]
    params: tuple[SkeletonTensor, ...]
    buffers: tuple[SkeletonTensor, ...]

    @staticmethod
    def of(module: nn.Module, params=(), buffers=()) -> "_Template":
        modules = tuple(
            (tuple(name.split(".")) if name else (), m, tuple(k for k, v in m.__dict__.items() if isinstance(v, (dict, list, set))))
            for name, m in module.named_modules(remove_duplicate=False)
        )
        return _Template(modules, params, buffers)

    def copy(self) -> dict[tuple[str, ...], nn.Module]:
        """A structural copy, by path (``()`` is the node's module): new objects of the same
        classes whose mutable attributes (submodule, parameter and hook dicts) are copies,
        so that nothing done to one copy (hooks, modes, drop path, bound slices) shows in
        another. Much cheaper than constructing it, or ``copy.deepcopy``."""
        out: dict[tuple[str, ...], nn.Module] = {}
        for path, module, mutable in self.modules:
            d = module.__dict__.copy()
            for k in mutable:
                d[k] = d[k].copy()
            new = type(module).__new__(type(module))
            object.__setattr__(new, "__dict__", d)
            if path:
                out[path[:-1]]._modules[path[-1]] = new
            out[path] = new
        return out


class _Leaves:
    """``nn`` as the views' op library sees it: ``nn.Conv2d`` and ``nn.BatchNorm2d`` are
    copies of cached meta-device instances (constructing one runs ``__init__`` and
    ``reset_parameters``, ~0.1 ms; a copy takes a few microseconds), everything else is
    ``torch.nn``. Only template construction calls them (a template miss costs ~3x less);
    the copies share their meta tensors, which the template then removes from its copy."""

    def __getattr__(self, name: str):
        return getattr(nn, name)

    @staticmethod
    def Conv2d(*args, **kwargs) -> nn.Conv2d:
        return _LEAVES.fetch(("Conv2d", args, tuple(kwargs.items())), lambda: _Template.of(nn.Conv2d(*args, **kwargs))).copy()[()]

    @staticmethod
    def BatchNorm2d(*args, **kwargs) -> nn.BatchNorm2d:
        return _LEAVES.fetch(("BatchNorm2d", args, tuple(kwargs.items())), lambda: _Template.of(nn.BatchNorm2d(*args, **kwargs))).copy()[()]


@functools.cache
def _ops_namespace() -> dict:
    """The op library as views run it: ``ops_source`` executed once, in a module of its own
    whose global ``nn`` is then :class:`_Leaves` (its classes already derive from the real
    ``nn.Module``; no forward uses ``nn``)."""
    ns = _execute(ops_source(), "hyctas_generated_view_ops").__dict__
    ns["nn"] = _Leaves()
    return ns


def _make_template(ctor: str, classes: int) -> _Template:
    with torch.device("meta"):
        module = eval(ctor, _ops_namespace(), {"classes": classes})  # the node's own line of Net.__init__
    found: dict[bool, list[SkeletonTensor]] = {True: [], False: []}
    # every occurrence: copies of one cached leaf share its meta tensors
    for is_param, named in ((True, module.named_parameters(remove_duplicate=False)), (False, module.named_buffers(remove_duplicate=False))):
        for name, t in list(named):
            path, _, leaf = name.rpartition(".")
            found[is_param].append(SkeletonTensor(name, tuple(path.split(".")) if path else (), leaf, tuple(t.shape), is_param))
    for spec in found[True] + found[False]:
        owner = module.get_submodule(".".join(spec.path))
        owner._parameters.pop(spec.leaf, None)
        owner._buffers.pop(spec.leaf, None)
        owner.__dict__[spec.leaf] = None  # a plain attribute, bound to a slice at each forward
    return _Template.of(module, tuple(found[True]), tuple(found[False]))


def _view_class(forward: tuple[str, ...]) -> type[nn.Module]:
    src = "\n".join(["class Net(nn.Module):",
                     '    """A subnet view\'s skeleton: the generated Net.forward; modules attached by view_skeleton."""',
                     "", *forward, ""])
    filename = f"<hyctas-view {hashlib.sha1(src.encode()).hexdigest()[:16]}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)  # tracebacks show the line
    ns = dict(_ops_namespace())
    exec(compile(src, filename, "exec"), ns)
    return ns["Net"]


# ~45 KB a template (digits: ~1000 distinct after 1500 views), ~8 KB a class, ~3 KB a leaf
_TEMPLATES = _LRU(2048)
_LEAVES = _LRU(4096)
_VIEW_CLASSES = _LRU(2048, evict=lambda cls: linecache.cache.pop(cls.forward.__code__.co_filename, None))


def view_skeleton(plan: Plan) -> tuple[nn.Module, list[tuple[str, nn.Module, SkeletonTensor]]]:
    """The network of ``plan`` with no tensors: ``Net.forward`` of the generated source over
    the generated ops, one module per node as ``Net.__init__`` would build it (that
    ``__init__`` only assigns them), every parameter and buffer an unregistered attribute set
    to None. Returns it and, for every tensor it lacks (parameters first, then buffers, each
    in ``named_parameters`` order): the node's attribute, the module that holds it, where."""
    forward = tuple(forward_source(plan))
    cls = _VIEW_CLASSES.fetch(forward, lambda: _view_class(forward))
    net = cls.__new__(cls)
    nn.Module.__init__(net)
    params: list = []
    buffers: list = []
    for node in plan.nodes:
        template = _TEMPLATES.fetch((node.ctor(), plan.classes), lambda: _make_template(node.ctor(), plan.classes))
        where = template.copy()
        net._modules[node.attr] = where[()]
        params += [(node.attr, where[t.path], t) for t in template.params]
        buffers += [(node.attr, where[t.path], t) for t in template.buffers]
    return net, params + buffers
