"""AST -> canonical text.

One fact per line, so that changing one op is a one-line diff (Caffe prototxt, not the DARTS
genotype string). Three or more identical consecutive cells print as a run ``1..16 conv w12``.
Nothing is aligned in columns: alignment would turn one change into many changed lines.

Round-trip properties (tested): ``parse(dumps(m)) == m`` for any module, ``dumps`` is stable,
and ``dumps(parse(text)) == text`` for every canonical file in ``archs/``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from hyctas_dsl.language.ast import Arch, Branch, Cell, Head, MemoryLimit, Module, OpCall, Space
from hyctas_dsl.language.parser import LANGUAGE_VERSION

__all__ = ["dumps", "format_op", "format_cell", "RUN_MIN"]

RUN_MIN = 3  # shortest run of identical cells written as `a..b`
INDENT = "  "

_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def dumps(module: Module | Arch | Space, comments: bool = True) -> str:
    """Canonical text of a module (or of a single arch or space, wrapped in a module)."""
    if not isinstance(module, Module):
        module = Module(decls=(module,))
    return _Printer(module.comments if comments else {}).module(module)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_good_names: set[str] = set()


def _name(s: str) -> str:
    """A name as written; an AST built in code with a name the grammar cannot read (a space,
    a dash...) is an error here rather than a file that does not parse back."""
    if s not in _good_names:
        if not isinstance(s, str) or not _NAME.fullmatch(s):
            raise ValueError(f"{s!r} is not a hyctas name (letters, digits and _, not starting with a digit)")
        if len(_good_names) > 100_000:  # a search names many candidates: keep the cache small
            _good_names.clear()
        _good_names.add(s)
    return s


def format_op(op: OpCall) -> str:
    if not op.args:
        return _name(op.name)
    inner = ", ".join(f"{_name(k)}={_num(v)}" for k, v in op.args)
    return f"{_name(op.name)}({inner})"


def format_cell(cell: Cell) -> str:
    return f"{format_op(cell.op)} w{cell.width}" + (" down" if cell.down else "")


def _num(v: Any) -> str:
    if isinstance(v, bool):
        raise ValueError("booleans are not numbers here")
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        raise ValueError(f"cannot write the non-finite number {v!r}")
    return repr(float(v))


def _string(s: str) -> str:
    # \r is escaped too: a raw carriage return would look like a line break to editors.
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") + '"'


def _meta_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return _num(v)
    return _string(str(v))


def _stride_set(strides: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in strides) + ")"


def _memory(m: MemoryLimit) -> str:
    """The largest unit that writes the limit exactly: whole units first (integer arithmetic,
    so a huge limit cannot overflow a float), then a decimal that parses back to the byte."""
    amount = f"{m.bytes} B"
    for unit, size in _UNITS:
        if m.bytes >= size and m.bytes % size == 0:
            amount = f"{m.bytes // size} {unit}"
            break
    else:
        for unit, size in _UNITS:
            if size <= m.bytes < 2**1000:
                text = repr(m.bytes / size)
                if int(float(text) * size) == m.bytes:
                    amount = f"{text} {unit}"
                    break
    return f"memory {amount} batch {m.batch} crop {m.crop[0]}x{m.crop[1]}"


def _head(h: Head) -> str:
    return f"head {_stride_set(h.strides)} output_stride {h.output_stride}"


class _Printer:
    def __init__(self, comments: Mapping[tuple, Any]):
        self.comments = comments
        self.used: set[tuple] = set()
        self.out: list[str] = []

    def emit(self, depth: int, text: str, *anchors: tuple) -> None:
        pad = INDENT * depth
        trailing = []
        for key in anchors:
            c = self.comments.get(key)
            if not c or key in self.used:
                continue
            self.used.add(key)
            self.out.extend(pad + line for line in c["leading"])
            if c["trailing"]:
                trailing.append(c["trailing"])
        self.out.append(pad + text + ("  " + " ".join(trailing) if trailing else ""))

    def module(self, m: Module) -> str:
        self.emit(0, f"hyctas {LANGUAGE_VERSION}", ("header",))
        for decl in m.decls:
            self.out.append("")
            if isinstance(decl, Space):
                self.space(decl)
            else:
                self.arch(decl)
        leftovers = [k for k in self.comments if k not in self.used and k != ("eof",)]
        # A comment is never lost: any whose statement is gone is kept at the end.
        tail = [line for k in leftovers for line in self._all_lines(k)]
        eof = self.comments.get(("eof",))
        if eof:
            tail += eof["leading"]
        if tail:
            self.out.append("")
            self.out.extend(tail)
        return "\n".join(self.out) + "\n"

    def _all_lines(self, key: tuple) -> list[str]:
        c = self.comments[key]
        return list(c["leading"]) + ([c["trailing"]] if c["trailing"] else [])

    def space(self, s: Space) -> None:
        k = ("space", s.name)
        self.emit(0, f"space {_name(s.name)} {{", k)
        rows = [
            ("filters", " ".join(str(f) for f in s.filters)),
            ("layers", str(s.layers)),
            ("strides", " ".join(str(x) for x in s.strides)),
            ("ops", " ".join(_name(o) for o in s.ops)),
            ("widths", " ".join(str(w) for w in s.widths)),
            ("branch_prior", " ".join(_num(float(p)) for p in s.branch_prior)),
            ("heads", " ".join(_stride_set(h) for h in s.heads)),
            ("output_strides", " ".join(str(x) for x in s.output_strides)),
        ]
        for key, value in rows:
            self.emit(1, f"{key} {value}", k + (key,))
        if s.memory is not None:
            self.emit(1, _memory(s.memory), k + ("memory",))
        if s.task != "semantic":  # the default is not written
            self.emit(1, f"task {_name(s.task)}", k + ("task",))
        self.emit(0, "}", k + ("end",))

    def arch(self, a: Arch) -> None:
        k = ("arch", a.name)
        self.emit(0, f"arch {_name(a.name)} {{", k)
        self.emit(1, f"filters {a.filters}", k + ("filters",))
        self.emit(1, f"layers {a.layers}", k + ("layers",))
        self.emit(1, _head(a.head), k + ("head",))
        if a.task != "semantic":  # the default is not written
            self.emit(1, f"task {_name(a.task)}", k + ("task",))
        for b in a.branches:
            self.branch(b, k)
        for f in a.fusions:
            self.emit(1, f"fuse {_name(f.src)} -> {_name(f.dst)} after {f.after}", k + ("fuse", f.src, f.dst, str(f.after)))
        if a.meta:
            self.emit(1, "meta {", k + ("meta",))
            for e in a.meta:
                self.emit(2, f"{_name(e.key)} {_meta_value(e.value)}", k + ("meta", e.key))
            self.emit(1, "}", k + ("meta", "end"))
        self.emit(0, "}", k + ("end",))

    def branch(self, b: Branch, arch_key: tuple) -> None:
        k = arch_key + ("branch", b.name)
        self.emit(1, f"branch {_name(b.name)} {{", k)
        for first, last in _runs(b.cells):
            label = str(first) if first == last else f"{first}..{last}"
            anchors = [k + ("cell", i) for i in range(first, last + 1)]
            self.emit(2, f"{label} {format_cell(b.cells[first - 1])}", *anchors)
        self.emit(1, "}", k + ("end",))


def _runs(cells: tuple[Cell, ...]) -> list[tuple[int, int]]:
    """1-based (first, last) layer ranges: maximal runs of >= RUN_MIN equal cells, else single."""
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(cells):
        j = i
        while j + 1 < len(cells) and cells[j + 1] == cells[i]:
            j += 1
        if j - i + 1 >= RUN_MIN:
            out.append((i + 1, j + 1))
        else:
            out.extend((n + 1, n + 1) for n in range(i, j + 1))
        i = j + 1
    return out
