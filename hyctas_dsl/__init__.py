"""hyctas: the HyCTAS architecture language and compiler.

The library API is shaped like the json module, and every stage is public on its own::

    import hyctas_dsl as hy
    module = hy.load("archs/hyctas_s.hy")      # read + parse + validate
    arch = module.archs[0]
    text = hy.dumps(arch)                      # canonical text
    hy.canonical_key(arch)                     # one-line key, meta excluded

    hy.parse(text)                             # text -> AST (syntax only)
    hy.validate(module, space)                 # AST -> validated AST (raises HyctasError)
    hy.check(module, space)                    # the same, as a list of diagnostics

The front end (this package minus ``hyctas_dsl.compiler``) never imports torch.
"""

from __future__ import annotations

from hyctas_dsl.language.api import canonical_key, check, dump, dumps, load, loads, read_text, validate
from hyctas_dsl.language.ast import Arch, Branch, Cell, Fusion, Head, MemoryLimit, MetaEntry, Module, OpCall, Space, Span
from hyctas_dsl.language.errors import Diagnostic, HyctasError
from hyctas_dsl.language.parser import parse
from hyctas_dsl.language.spaces import paper_space

__version__ = "0.1.0"

__all__ = [
    "Arch",
    "Branch",
    "Cell",
    "Diagnostic",
    "Fusion",
    "Head",
    "HyctasError",
    "MemoryLimit",
    "MetaEntry",
    "Module",
    "OpCall",
    "Space",
    "Span",
    "canonical_key",
    "check",
    "dump",
    "dumps",
    "load",
    "loads",
    "paper_space",
    "parse",
    "read_text",
    "validate",
]
