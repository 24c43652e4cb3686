"""load / loads / dump / dumps / validate: the json-module-shaped front door."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Union

from hyctas_dsl.language.ast import Arch, Cell, Module, OpCall, Space, Span
from hyctas_dsl.language.errors import Diagnostic, HyctasError
from hyctas_dsl.fileio import write_text_atomic
from hyctas_dsl.language.op_table import OPS
from hyctas_dsl.language.parser import parse
from hyctas_dsl.language.printer import dumps as _dumps
from hyctas_dsl.language.printer import format_op
from hyctas_dsl.language.validate import check_module

__all__ = ["read_text", "loads", "load", "dumps", "dump", "check", "validate", "canonical_key"]

PathLike = Union[str, os.PathLike]


def read_text(path: PathLike) -> str:
    """Read a source file as UTF-8. OSError (missing, directory, unreadable) propagates;
    bytes that are not UTF-8 raise HY005 at the first bad byte."""
    data = Path(path).read_bytes()
    return decode(data, str(path))


def decode(data: bytes, path: str | None = None) -> str:
    try:
        text = data.decode("utf-8")
        # A byte-order mark (some Windows editors write one) is not part of the text.
        return text[1:] if text.startswith("\ufeff") else text
    except UnicodeDecodeError as e:
        head = data[: e.start]
        line = head.count(b"\n") + 1
        col = e.start - (head.rfind(b"\n") + 1) + 1
        span = Span(line=line, column=col, end_line=line, end_column=col + 1)
        shown = head.decode("utf-8", errors="replace").splitlines()
        src = "\n".join(shown) if shown else None
        raise HyctasError(
            [Diagnostic("HY005", f"byte 0x{data[e.start]:02x} is not UTF-8", span, "save the file as UTF-8 text", path, src)]
        ) from None


def check(module: Module, space: Space | None = None) -> list[Diagnostic]:
    """Every rule violation of a parsed module (empty when valid)."""
    return check_module(module, space)


def validate(module: Module, space: Space | None = None, *, source: str | None = None, path: str | None = None) -> Module:
    """Return ``module`` if it is valid against ``space``; raise HyctasError listing every
    violation otherwise (with ``source`` shown under each)."""
    diags = check_module(module, space)
    if diags:
        raise HyctasError(diags).with_source(source, path)
    return module


def loads(text: str, path: str | None = None, *, space: Space | None = None, check_rules: bool = True) -> Module:
    """Parse (and by default validate) source text."""
    module = parse(text, path)
    if check_rules:
        validate(module, space, source=text, path=path)
    return module


def load(fp: PathLike | IO, *, space: Space | None = None, check_rules: bool = True) -> Module:
    """Parse (and by default validate) a file, given as a path or an open file."""
    if hasattr(fp, "read"):
        data = fp.read()
        path = getattr(fp, "name", None)
        text = decode(data, path) if isinstance(data, bytes) else data
    else:
        path = str(fp)
        text = read_text(fp)
    return loads(text, path, space=space, check_rules=check_rules)


def dumps(obj: Module | Arch | Space, comments: bool = True) -> str:
    """Canonical source text."""
    return _dumps(obj, comments=comments)


def dump(obj: Module | Arch | Space, fp: PathLike | IO) -> None:
    """Write canonical text to an open file, or atomically to a path."""
    text = dumps(obj)
    if hasattr(fp, "write"):
        fp.write(text)
        return
    write_text_atomic(fp, text)


def canonical_key(arch: Arch) -> str:
    """A one-line key that is equal exactly for architectures that compute the same network
    (names, branch order and meta excluded), for de-duplication, logs and tables
    (NAS-Bench-201's ``to_unique_str``).

    Example: ``F12 L11 (32)/8 | zconv2.8 zconv.8v zconv.8 ...``; ``v`` marks a downsampling
    cell, fusion nodes follow as ``0>1@3`` (branch indices in order of final stride).
    """
    # A run's cells are one object: format each object once (keyed by identity, which needs
    # no hashing of the AST); the search calls this for every candidate.
    keys: dict[int, str] = {}

    def cell_key(c: Cell) -> str:
        k = keys.get(id(c))
        if k is None:
            spec = OPS.get(c.op.name)
            args = tuple(
                (a, v) for a, v in c.op.args if spec is None or a not in spec.args or spec.args[a].default != v
            )
            op = format_op(OpCall(name=c.op.name, args=args)) if args != c.op.args else format_op(c.op)
            k = keys[id(c)] = f"{op}.{c.width}{'v' if c.down else ''}"
        return k

    finals = [b.final_stride() for b in arch.branches]
    if len(set(finals)) == len(finals):  # always so in a valid arch: no tie to break
        order = [b for _s, b in sorted(zip(finals, arch.branches), key=lambda sb: sb[0])]
    else:
        order = sorted(arch.branches, key=lambda b: (b.final_stride(), [str(c) for c in b.cells]))
    index = {b.name: i for i, b in enumerate(order)}
    parts = [
        f"F{arch.filters} L{arch.layers} ({','.join(str(s) for s in arch.head.strides)})/{arch.head.output_stride}"
    ]
    for b in order:
        parts.append(" ".join(cell_key(c) for c in b.cells))
    fusions = sorted(f"{index.get(f.src, f.src)}>{index.get(f.dst, f.dst)}@{f.after}" for f in arch.fusions)
    if fusions:
        parts.append("fuse " + " ".join(fusions))
    if arch.task != "semantic":
        parts.append(arch.task)
    return " | ".join(parts)
