"""Text -> AST. One cached LALR parser; every Lark error becomes a located HyctasError.

The parser does only what the text alone decides: syntax, literals (whole numbers, widths),
layer numbering, duplicate or missing statements. Whether an architecture fits a search
space is the validator's job (``hyctas_dsl.language.validate``).

Comments are collected with their lines and attached to *anchors* (the statement on the
same line, else the next statement), so that ``fmt`` can write them back in place.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_right
from functools import lru_cache
from importlib.resources import files
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from hyctas_dsl.language.ast import (
    Arch,
    Branch,
    Cell,
    Fusion,
    Head,
    MemoryLimit,
    MetaEntry,
    Module,
    OpCall,
    Space,
    Span,
)
from hyctas_dsl.language.errors import Diagnostic, HyctasError

__all__ = ["parse", "LANGUAGE_VERSION"]

LANGUAGE_VERSION = 1

# How terminals are named in "expected ..." messages.
_TERMINAL_NAMES = {
    "NUMBER": "a number",
    "NAME": "a name",
    "WIDTH": "a width such as `w8`",
    "SIZE": "a size such as `256x512`",
    "STRING": 'a "string"',
    "LBRACE": "`{`",
    "RBRACE": "`}`",
    "LPAR": "`(`",
    "RPAR": "`)`",
    "COMMA": "`,`",
    "EQUALS": "`=`",
    "ARROW": "`->`",
    "DOTDOT": "`..`",
    "$END": "the end of the file",
}

# Layer numbers stop here: a run such as `1..99999999999 conv w12` must not make a few bytes
# of text expand into billions of cells (the paper's space has 20 layers).
MAX_LAYER = 1000

# How a found token of these kinds is named in "unexpected ..." messages.
_FOUND_NOUNS = {"NUMBER": "number", "NAME": "name", "WIDTH": "width", "SIZE": "size", "STRING": "string"}

_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}

_tls = threading.local()


def _on_comment(tok: Token) -> Token:
    _tls.comments.append(tok)
    return tok


@lru_cache(maxsize=1)
def _lark() -> Lark:
    text = files("hyctas_dsl.grammar").joinpath("hyctas.lark").read_text(encoding="utf-8")
    return Lark(
        text,
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=False,
        lexer_callbacks={"COMMENT": _on_comment},
    )


def _terminal_name(name: str) -> str:
    if name in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[name]
    try:
        pattern = _lark().get_terminal(name).pattern
        if pattern.type == "str":
            return f"`{pattern.value}`"
    except (KeyError, AttributeError):
        pass
    return name.lower()


def _span_of(x: Token | Tree) -> Span | None:
    if isinstance(x, Token):
        if x.line is None:
            return None
        return Span(
            line=x.line,
            column=x.column,
            end_line=x.end_line or x.line,
            end_column=x.end_column or x.column + len(x),
        )
    meta = x.meta
    if getattr(meta, "empty", True):
        return None
    return Span(line=meta.line, column=meta.column, end_line=meta.end_line, end_column=meta.end_column)


def _end_span(text: str) -> Span:
    lines = text.split("\n")
    line = len(lines)
    col = len(lines[-1]) + 1
    if line > 1 and lines[-1] == "":
        line -= 1
        col = len(lines[line - 1]) + 1
    return Span(line=line, column=col, end_line=line, end_column=col + 1)


def _syntax_error(err: UnexpectedInput, text: str) -> Diagnostic:
    if isinstance(err, UnexpectedCharacters):
        ch = text[err.pos_in_stream] if 0 <= err.pos_in_stream < len(text) else "?"
        span = Span(line=err.line, column=err.column, end_line=err.line, end_column=err.column + 1)
        hint = None
        expected = sorted(_terminal_name(t) for t in (err.allowed or ()))
        if expected:
            hint = "expected " + _join_or(expected)
        if ch == "\t":
            shown = "a tab"
        elif ch.isprintable():
            shown = f"`{ch}`"
        else:
            shown = f"U+{ord(ch):04X}"
        return Diagnostic("HY001", f"unexpected character {shown}", span, hint)
    expected = sorted({_terminal_name(t) for t in getattr(err, "expected", ()) or ()})
    hint = ("expected " + _join_or(expected)) if expected else None
    if isinstance(err, UnexpectedToken) and err.token.type != "$END":
        tok = err.token
        span = _span_of(tok) or _end_span(text)
        shown = tok.value if len(tok.value) <= 40 else tok.value[:37] + "..."
        noun = _FOUND_NOUNS.get(tok.type)
        msg = f"unexpected {noun} `{shown}`" if noun else f"unexpected `{shown}`"
        return Diagnostic("HY001", msg, span, hint)
    # UnexpectedEOF, or UnexpectedToken at $END: the file stopped too early.
    return Diagnostic("HY001", "unexpected end of file", _end_span(text), hint)


def _join_and(names: list[str]) -> str:
    quoted = [f"`{n}`" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _join_or(items: list[str]) -> str:
    # Punctuation and "a number"/"a name" first, keywords after: at the end of a file the
    # missing `}` is the likely answer and must not be cut off by the "..." below.
    items = sorted(items, key=lambda t: (t[1:2].isalpha() and t.startswith("`"), t))
    if len(items) > 10:
        items = items[:10] + ["..."]
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " or " + items[-1]


def parse(text: str, path: str | None = None) -> Module:
    """Parse source text into a :class:`Module`; raise :class:`HyctasError` on any mistake."""
    if not isinstance(text, str):
        raise TypeError("parse() takes str; decode bytes first (see hyctas_dsl.load)")
    _tls.comments = []
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as err:
        raise HyctasError([_syntax_error(err, text)]).with_source(text, path) from None
    except RecursionError:  # pragma: no cover - the grammar has no nesting, but be safe
        raise HyctasError(
            [Diagnostic("HY001", "input nests too deeply", Span(line=1, column=1, end_line=1, end_column=2))]
        ).with_source(text, path) from None
    finally:
        comments, _tls.comments = _tls.comments, []
    builder = _Builder()
    module = builder.module(tree)
    if builder.diagnostics:
        raise HyctasError(builder.diagnostics).with_source(text, path)
    attached = _attach_comments(comments, builder.anchors)
    return module.model_copy(update={"comments": attached})


# ---------------------------------------------------------------------------- comments


def _attach_comments(comments: list[Token], anchors: list[tuple[int, int, tuple]]) -> dict:
    """Map each anchor to ``{"leading": [...], "trailing": str | None}``.

    A comment on a line that holds a statement trails the first statement of that line; any
    other comment leads the next statement (or the end of the file). Linear in the number of
    comments and anchors (bisect), so a huge file with many comments stays fast.
    """
    out: dict[tuple, dict[str, Any]] = {}
    anchors = sorted(anchors, key=lambda a: (a[0], a[1]))
    lines = [a[0] for a in anchors]
    first_on_line: dict[int, tuple[int, tuple]] = {}
    for line, col, key in anchors:
        first_on_line.setdefault(line, (col, key))
    for tok in comments:
        text = str(tok).rstrip()
        line = tok.line
        first = first_on_line.get(line)
        if first is not None and first[0] < tok.column:
            entry = out.setdefault(first[1], {"leading": [], "trailing": None})
            entry["trailing"] = text if entry["trailing"] is None else entry["trailing"] + " " + text
            continue
        i = bisect_right(lines, line)
        key = anchors[i][2] if i < len(anchors) else ("eof",)
        out.setdefault(key, {"leading": [], "trailing": None})["leading"].append(text)
    return out


# ---------------------------------------------------------------------------- tree -> AST


def _tokens(tree: Tree) -> list[Token]:
    return [c for c in tree.children if isinstance(c, Token)]


class _Builder:
    """Walks Lark's tree, building AST nodes and collecting every problem it sees."""

    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []
        self.anchors: list[tuple[int, int, tuple]] = []

    # -- helpers
    def complete(self, fields: dict, required: tuple[str, ...], what: str, at: Token, hint: str) -> bool:
        """Whether a block has every required field and each parsed (HY007 names what is
        missing; a field that failed to parse already has its own error)."""
        missing = [k for k in required if k not in fields]
        if missing:
            self.error("HY007", f"{what} is missing {_join_and(missing)}", at, hint)
            return False
        return all(v is not None for v in fields.values())

    def error(self, code: str, message: str, at: Token | Tree | Span | None, hint: str | None = None) -> None:
        span = at if isinstance(at, Span) or at is None else _span_of(at)
        self.diagnostics.append(Diagnostic(code, message, span, hint))

    def anchor(self, at: Token | Tree, key: tuple) -> None:
        span = _span_of(at)
        if span is not None:
            self.anchors.append((span.line, span.column, key))

    def number(self, tok: Token, what: str = "a number") -> int | float | None:
        """A numeric literal; ``1e999`` (not finite) is an error, so every AST number prints."""
        value = _number(tok)
        if isinstance(value, float) and not math.isfinite(value):
            self.error("HY003", f"`{tok}` is out of range for {what}", tok, "write a finite number")
            return None
        return value

    def probability(self, tok: Token) -> float | None:
        """A branch probability as a float; an integer too large for a float (``1`` followed
        by 400 zeros) is a located error, not an OverflowError that would end the report."""
        value = self.number(tok, "a branch probability")
        if value is None:
            return None
        try:
            return float(value)
        except OverflowError:
            self.error("HY003", f"`{tok}` is out of range for a branch probability", tok, "write a number from 0 to 1")
            return None

    def whole(self, tok: Token, what: str, minimum: int = 0) -> int | None:
        value = _number(tok)
        if not isinstance(value, int):
            self.error("HY003", f"{what} must be a whole number, not `{tok}`", tok)
            return None
        if value < minimum:
            self.error("HY003", f"{what} must be at least {minimum}, not {value}", tok)
            return None
        return value

    # -- module
    def module(self, tree: Tree) -> Module:
        header, *decls = tree.children
        version_tok = header.children[1]
        self.anchor(header, ("header",))
        version = _number(version_tok)
        if version != LANGUAGE_VERSION:
            self.error(
                "HY002",
                f"unsupported language version `{version_tok}`",
                version_tok,
                f"this hyctas reads `hyctas {LANGUAGE_VERSION}` files",
            )
        out = []
        for d in decls:
            node = self.space(d) if d.data == "space" else self.arch(d)
            if node is not None:
                out.append(node)
        return Module(version=LANGUAGE_VERSION, decls=tuple(out), span=_span_of(tree))

    # -- space
    def space(self, tree: Tree) -> Space | None:
        kw, name_tok, _lb, *items, rb = tree.children
        name = str(name_tok)
        self.anchor(kw, ("space", name))
        self.anchor(rb, ("space", name, "end"))
        fields: dict[str, Any] = {}
        spans: dict[str, Span] = {"name": _span_of(name_tok)}
        for item in items:
            key = item.data[len("sp_") :]
            toks = item.children
            self.anchor(item, ("space", name, key))
            if key in fields:
                self.error("HY006", f"space `{name}` declares `{toks[0]}` twice", toks[0], "keep one of them")
                continue
            spans[key] = _span_of(item)
            args = toks[1:]
            if key == "filters":
                fields[key] = tuple(v for v in (self.whole(t, "a filter multiplier", 1) for t in args) if v)
            elif key == "layers":
                fields[key] = self.whole(args[0], "the number of layers", 1)
            elif key in ("strides", "widths", "output_strides"):
                fields[key] = tuple(v for v in (self.whole(t, key[:-1], 1) for t in args) if v)
            elif key == "ops":
                fields[key] = tuple(str(t) for t in args)
            elif key == "branch_prior":
                prior = [self.probability(t) for t in args]
                fields[key] = None if None in prior else tuple(prior)
            elif key == "heads":
                fields[key] = tuple(self.stride_set(t) for t in args)
            elif key == "task":
                fields[key] = str(args[0])
            elif key == "memory":
                amount, unit, _b, batch, _c, size = args
                if str(unit) not in _UNITS:
                    self.error("HY003", f"unknown memory unit `{unit}`", unit, "use B, KiB, MiB, GiB or TiB")
                    continue
                value = self.number(amount, "the memory limit")
                h, w = (int(x) for x in str(size).split("x"))
                b = self.whole(batch, "the batch size", 1)
                if value is None or b is None:
                    continue
                if value <= 0 or h < 1 or w < 1:
                    self.error("HY003", "memory limit, batch and crop must be positive", item)
                    continue
                total = value * _UNITS[str(unit)]
                if isinstance(total, float) and not math.isfinite(total):
                    self.error("HY003", f"the memory limit `{amount} {unit}` is out of range", amount)
                    continue
                if total < 1:  # it is kept in whole bytes: less than one would print as `0 B`
                    self.error("HY003", f"the memory limit `{amount} {unit}` is less than one byte", amount)
                    continue
                fields[key] = MemoryLimit(bytes=int(total), batch=b, crop=(h, w), span=_span_of(item))
        required = ("filters", "layers", "strides", "ops", "widths", "branch_prior", "heads", "output_strides")
        if not self.complete(fields, required, f"space `{name}`", name_tok, "see archs/paper_space.hy for a complete space"):
            return None
        return Space(name=name, span=_span_of(tree), spans=spans, **fields)

    def stride_set(self, tree: Tree) -> tuple[int, ...]:
        return tuple(
            v
            for v in (self.whole(t, "a stride", 1) for t in _tokens(tree) if t.type == "NUMBER")
            if v is not None
        )

    # -- arch
    def arch(self, tree: Tree) -> Arch | None:
        kw, name_tok, _lb, *items, rb = tree.children
        name = str(name_tok)
        self.anchor(kw, ("arch", name))
        self.anchor(rb, ("arch", name, "end"))
        fields: dict[str, Any] = {}
        spans: dict[str, Span] = {"name": _span_of(name_tok)}
        branches: list[Branch] = []
        fusions: list[Fusion] = []
        meta: list[MetaEntry] | None = None
        for item in items:
            kind = item.data
            if kind in ("a_filters", "a_layers", "a_head", "a_task"):
                key = kind[2:]
                self.anchor(item, ("arch", name, key))
                if key in fields:
                    self.error("HY006", f"arch `{name}` declares `{key}` twice", item.children[0], "keep one of them")
                    continue
                spans[key] = _span_of(item)
                if key == "filters":
                    fields[key] = self.whole(item.children[1], "the filter multiplier", 1)
                elif key == "layers":
                    fields[key] = self.whole(item.children[1], "the number of layers", 1)
                elif key == "task":
                    fields[key] = str(item.children[1])
                else:
                    fields[key] = self.head(item)
            elif kind == "a_fuse":
                _f, src, _arrow, dst, _after, layer = item.children
                after = self.whole(layer, "a fusion layer", 1)
                # Keyed by the value, as the printer writes it (`after 03` is `after 3`).
                self.anchor(item, ("arch", name, "fuse", str(src), str(dst), str(after if after is not None else layer)))
                if after is not None:
                    fusions.append(
                        Fusion(
                            src=str(src),
                            dst=str(dst),
                            after=after,
                            span=_span_of(item),
                            spans={"src": _span_of(src), "dst": _span_of(dst), "after": _span_of(layer)},
                        )
                    )
            elif kind == "branch":
                b = self.branch(item, name)
                if b is not None:
                    branches.append(b)
            elif kind == "meta":
                if meta is not None:
                    self.error("HY006", f"arch `{name}` has two `meta` blocks", item, "merge them into one")
                    continue
                meta = self.meta(item, name)
        if not self.complete(fields, ("filters", "layers", "head"), f"arch `{name}`", name_tok,
                             "an arch needs `filters`, `layers`, `head` and at least one `branch`"):
            return None
        return Arch(
            name=name,
            branches=tuple(branches),
            fusions=tuple(fusions),
            meta=tuple(meta or ()),
            span=_span_of(tree),
            spans=spans,
            **fields,
        )

    def head(self, item: Tree) -> Head | None:
        children = item.children
        strides = self.stride_set(children[1])
        spans = {"strides": _span_of(children[1])}
        os_ = 8
        if len(children) > 2:
            value = self.whole(children[3], "the output stride", 1)
            if value is None:
                return None
            os_ = value
            spans["output_stride"] = _span_of(children[3])
        return Head(strides=strides, output_stride=os_, span=_span_of(item), spans=spans)

    def branch(self, tree: Tree, arch: str) -> Branch | None:
        kw, name_tok, _lb, *cells, rb = tree.children
        name = str(name_tok)
        self.anchor(kw, ("arch", arch, "branch", name))
        self.anchor(rb, ("arch", arch, "branch", name, "end"))
        out: list[Cell] = []
        ok = True
        for cell_tree in cells:
            children = cell_tree.children
            first_tok = children[0]
            first = self.layer_number(first_tok)
            last = first
            rest = children[1:]
            if rest and isinstance(rest[0], Token) and rest[0].type == "DOTDOT":
                last = self.layer_number(rest[1])
                rest = rest[2:]
            op_tree, width_tok, *down = rest
            if first is None or last is None:
                ok = False
                continue
            expected = len(out) + 1
            self.anchor(cell_tree, ("arch", arch, "branch", name, "cell", first))
            if first != expected:
                self.error(
                    "HY004",
                    f"branch `{name}`: expected layer {expected} here, found {first}",
                    first_tok,
                    "number the cells of a branch 1, 2, 3, ... without gaps",
                )
                ok = False
            if last < first:
                self.error("HY004", f"layer range {first}..{last} runs backwards", cell_tree, f"write {last}..{first}")
                ok = False
                continue
            op = self.op(op_tree)
            width = int(str(width_tok)[1:])
            span = _span_of(cell_tree)
            spans = {"layer": _span_of(first_tok), "op": _span_of(op_tree), "width": _span_of(width_tok)}
            if down:
                spans["down"] = _span_of(down[0])
            if op is None:
                ok = False
                continue
            # AST nodes are frozen, so a run shares one Cell object.
            out.extend([Cell(op=op, width=width, down=bool(down), span=span, spans=spans)] * (last - first + 1))
        if not ok:
            return None
        return Branch(name=name, cells=tuple(out), span=_span_of(tree), spans={"name": _span_of(name_tok)})

    def layer_number(self, tok: Token) -> int | None:
        value = self.whole(tok, "a layer number", 1)
        if value is not None and value > MAX_LAYER:
            self.error("HY004", f"layer {value} is beyond the largest layer number, {MAX_LAYER}", tok)
            return None
        return value

    def op(self, tree: Tree) -> OpCall | None:
        name_tok, *rest = tree.children
        args: dict[str, int | float] = {}
        for arg in rest:
            if not isinstance(arg, Tree):
                continue
            key_tok, _eq, value_tok = arg.children
            key = str(key_tok)
            if key in args:
                self.error("HY006", f"argument `{key}` given twice", key_tok)
                return None
            value = self.number(value_tok, f"argument `{key}`")
            if value is None:
                return None
            args[key] = value
        return OpCall(
            name=str(name_tok),
            args=tuple(sorted(args.items())),
            span=_span_of(tree),
            spans={"name": _span_of(name_tok)},
        )

    def meta(self, tree: Tree, arch: str) -> list[MetaEntry]:
        kw, _lb, *entries, rb = tree.children
        self.anchor(kw, ("arch", arch, "meta"))
        self.anchor(rb, ("arch", arch, "meta", "end"))
        out: list[MetaEntry] = []
        seen: set[str] = set()
        for e in entries:
            key_tok, value_tok = e.children
            key = str(key_tok)
            self.anchor(e, ("arch", arch, "meta", key))
            if key in seen:
                self.error("HY006", f"meta key `{key}` given twice", key_tok, "keep one of them")
                continue
            seen.add(key)
            if value_tok.type == "NUMBER":
                value = self.number(value_tok, f"meta `{key}`")
                if value is None:
                    continue
            else:
                value = _meta_value(value_tok)
            out.append(MetaEntry(key=key, value=value, span=_span_of(e)))
        return out


def _number(tok: Token) -> int | float:
    s = str(tok)
    if any(c in s for c in ".eE"):
        v = float(s)
        return v
    return int(s)


def _meta_value(tok: Token) -> Any:
    if tok.type == "STRING":
        return _unescape(str(tok)[1:-1])
    if tok.type == "NUMBER":
        return _number(tok)
    s = str(tok)
    if s == "true":
        return True
    if s == "false":
        return False
    return s


def _unescape(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            out.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)
