"""The typed abstract syntax of the hyctas language.

One artifact flows through the whole project: these frozen pydantic models. The parser builds
them, the validator checks them, the printer writes them back, the genome operators of the
search mutate them and the compiler lowers them. No other encoding of an architecture exists.

Source locations (``span``, ``spans``) and comments ride along for error messages and ``fmt``
but take no part in equality or hashing: two architectures are equal when they describe the
same thing, wherever they were written.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Span",
    "Node",
    "OpCall",
    "Cell",
    "Branch",
    "Fusion",
    "Head",
    "MetaEntry",
    "MemoryLimit",
    "Arch",
    "Space",
    "Module",
    "Decl",
    "MetaValue",
]

MetaValue = Union[bool, int, float, str]


class Span(BaseModel):
    """A region of source text: 1-based lines and columns, end exclusive."""

    model_config = ConfigDict(frozen=True)
    line: int
    column: int
    end_line: int
    end_column: int


# Fields that describe where a node was written, not what it is.
_LOCATION_FIELDS = frozenset({"span", "spans"})


@lru_cache(maxsize=None)
def _semantic_names(cls: type) -> tuple[str, ...]:
    return tuple(name for name in cls.model_fields if name not in _LOCATION_FIELDS)


class Node(BaseModel):
    """Base of every AST node: frozen, strict about unknown fields, location-blind equality."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=False)

    span: Span | None = Field(default=None, repr=False, exclude=True)
    # Spans of individual tokens inside the node (e.g. "filters", "width", "down"), so that an
    # error can put its caret under the exact token that breaks a rule.
    spans: Mapping[str, Span] = Field(default_factory=dict, repr=False, exclude=True)

    def _semantic(self) -> tuple[Any, ...]:
        # Hot path (the graph builder hashes cells many times): read __dict__ directly with
        # the semantic field names cached per class.
        d = self.__dict__
        return tuple([d[name] for name in _semantic_names(type(self))])

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return self._semantic() == other._semantic()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._semantic()))

    def where(self, part: str | None = None) -> Span | None:
        """The span of token ``part`` when known, else of the whole node."""
        if part is not None and part in self.spans:
            return self.spans[part]
        return self.span


class OpCall(Node):
    """A cell's operation, e.g. ``conv`` or ``attn(heads=4)``; args sorted by name."""

    name: str
    args: tuple[tuple[str, int | float], ...] = ()

    def arg(self, key: str, default: int | float | None = None) -> int | float | None:
        for k, v in self.args:
            if k == key:
                return v
        return default


class Cell(Node):
    """One searchable cell C_s^l (paper section 3.2): an op, a width in twelfths and
    whether it downsamples by 2."""

    op: OpCall
    width: int
    down: bool = False


class Branch(Node):
    """A chain of L cells that starts from the stem at stride 8. Cell i is layer i+1."""

    name: str
    cells: tuple[Cell, ...]

    def strides(self, start: int = 8) -> tuple[int, ...]:
        """Output stride of every cell."""
        out, s = [], start
        for cell in self.cells:
            s = s * 2 if cell.down else s
            out.append(s)
        return tuple(out)

    def final_stride(self, start: int = 8) -> int:
        s = start
        for cell in self.cells:
            s = s * 2 if cell.down else s
        return s

    def down_positions(self) -> frozenset[int]:
        """1-based layers that downsample (the set constraint 2 compares)."""
        return frozenset(i + 1 for i, c in enumerate(self.cells) if c.down)


class Fusion(Node):
    """A fusion node, the paper's binary gate N_s^l: ``src -> dst after layer`` adds branch
    ``src``'s output of ``layer``, resampled to ``dst``'s stride and projected by a 1x1 conv,
    to ``dst``'s stream (the input of ``dst``'s next cell)."""

    src: str
    dst: str
    after: int


class Head(Node):
    """The aggregation head theta (section 3.2): the strides it aggregates and the output
    stride (8, or 4 when the stem's stride-4 features are merged)."""

    strides: tuple[int, ...]
    output_stride: int = 8


class MetaEntry(Node):
    key: str
    value: MetaValue


class MemoryLimit(Node):
    """Constraint 4: training memory of a subnet at ``batch`` x ``crop`` must fit ``bytes``."""

    bytes: int
    batch: int
    crop: tuple[int, int]


class Arch(Node):
    """One point of a search space: a concrete architecture."""

    name: str
    filters: int
    layers: int
    branches: tuple[Branch, ...]
    fusions: tuple[Fusion, ...] = ()
    head: Head
    # ``semantic`` or ``panoptic``: a panoptic arch adds Panoptic-DeepLab's centre heatmap
    # and offset branches on top of the head (paper section 4.3, Tables 4 and 6).
    task: str = "semantic"
    meta: tuple[MetaEntry, ...] = Field(default=(), exclude=False)

    def branch(self, name: str) -> Branch | None:
        for b in self.branches:
            if b.name == name:
                return b
        return None

    def meta_dict(self) -> dict[str, MetaValue]:
        return {m.key: m.value for m in self.meta}


class Space(Node):
    """What may be searched (DESIGN.md "The model"), with constraint 4's memory budget."""

    name: str
    filters: tuple[int, ...]
    layers: int
    strides: tuple[int, ...]
    ops: tuple[str, ...]
    widths: tuple[int, ...]
    branch_prior: tuple[float, ...]
    heads: tuple[tuple[int, ...], ...]
    output_strides: tuple[int, ...]
    memory: MemoryLimit | None = None
    # a panoptic space's supernet carries the panoptic branches on every head
    task: str = "semantic"

    @property
    def max_branches(self) -> int:
        return len(self.branch_prior)

    @property
    def max_filters(self) -> int:
        return max(self.filters)


Decl = Union[Space, Arch]


class Module(Node):
    """A whole source file: a version header and any number of spaces and architectures.

    ``comments`` maps an anchor (see ``hyctas_dsl.language.parser``) to the comments written before
    and beside that line, so that ``fmt`` can put them back; it is not part of equality.
    """

    version: int = 1
    decls: tuple[Decl, ...] = ()
    comments: Mapping[tuple, Any] = Field(default_factory=dict, repr=False, exclude=True)

    def _semantic(self) -> tuple[Any, ...]:
        return (self.version, self.decls)

    @property
    def archs(self) -> tuple[Arch, ...]:
        return tuple(d for d in self.decls if isinstance(d, Arch))

    @property
    def spaces(self) -> tuple[Space, ...]:
        return tuple(d for d in self.decls if isinstance(d, Space))
