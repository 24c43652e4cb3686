"""The one error type for a user's mistakes, and how it is shown.

Every problem in a user's input becomes a :class:`Diagnostic` with a stable rule id, a
location and a hint; :class:`HyctasError` carries one or more of them. Rendering follows
ruff/rustc: ``path:line:col: CODE message``, the source line under a ``|`` gutter, a caret
under the offending token and the hint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from hyctas_dsl.ast import Span

__all__ = ["Diagnostic", "HyctasError", "render"]


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None = None
    hint: str | None = None
    path: str | None = None
    # The source text, so that the diagnostic can show the offending line on its own.
    source: str | None = field(default=None, repr=False, compare=False)

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    def with_source(self, source: str | None, path: str | None) -> "Diagnostic":
        return Diagnostic(
            self.code,
            self.message,
            self.span,
            self.hint,
            self.path if self.path is not None else path,
            self.source if self.source is not None else source,
        )

    def headline(self) -> str:
        where = self.path or "<input>"
        if self.span is not None:
            where += f":{self.span.line}:{self.span.column}"
        return f"{where}: {self.code} {self.message}"

    def render(self) -> str:
        lines = [self.headline()]
        src_line = _source_line(self.source, self.span)
        if src_line is not None and self.span is not None:
            num = str(self.span.line)
            pad = " " * len(num)
            shown = src_line.expandtabs(1)
            start = max(self.span.column - 1, 0)
            if self.span.end_line == self.span.line:
                width = max(self.span.end_column - self.span.column, 1)
            else:
                width = max(len(shown.rstrip()) - start, 1)
            lines.append(f"{pad} |")
            lines.append(f"{num} | {shown}")
            lines.append(f"{pad} | {' ' * start}{'^' * width}")
            if self.hint:
                lines.append(f"{pad} = hint: {self.hint}")
        elif self.hint:
            lines.append(f"  = hint: {self.hint}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "code": self.code,
            "message": self.message,
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "end_line": self.span.end_line if self.span else None,
            "end_column": self.span.end_column if self.span else None,
            "hint": self.hint,
        }


def _source_line(source: str | None, span: Span | None) -> str | None:
    if source is None or span is None:
        return None
    lines = source.splitlines()
    if 1 <= span.line <= len(lines):
        # Very long lines (e.g. junk input) are cut so a message stays readable.
        return lines[span.line - 1][:200]
    return None


class HyctasError(Exception):
    """A user's mistake: one or more located diagnostics. Never a traceback for bad input."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        super().__init__(self.diagnostics[0].headline() if self.diagnostics else "hyctas error")

    @property
    def codes(self) -> list[str]:
        return [d.code for d in self.diagnostics]

    def with_source(self, source: str | None, path: str | None) -> "HyctasError":
        return HyctasError(d.with_source(source, path) for d in self.diagnostics)

    def render(self) -> str:
        return render(self.diagnostics)

    def __str__(self) -> str:
        return self.render()


def render(diagnostics: Iterable[Diagnostic]) -> str:
    return "\n\n".join(d.render() for d in diagnostics)
