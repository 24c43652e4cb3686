"""The one error type for a user's mistakes, and how it is shown.

Every problem in a user's input becomes a :class:`Diagnostic` with a stable rule id, a
location and a hint; :class:`HyctasError` carries one or more of them. Rendering follows
ruff/rustc: ``path:line:col: CODE message``, the source line under a ``|`` gutter, a caret
under the offending token and the hint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from hyctas_dsl.language.ast import Span

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
            start = max(self.span.column - 1, 0)
            if self.span.end_line == self.span.line:
                width = max(self.span.end_column - self.span.column, 1)
            else:
                width = max(len(src_line.rstrip()) - start, 1)
            shown, start = _window(src_line, start)
            width = min(width, max(len(shown) - start, 1))
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
    # Split on "\n" only, as the lexer counts lines (str.splitlines would also split on
    # form feeds, U+2028 and others, and show the wrong line).
    lines = source.split("\n")
    if 1 <= span.line <= len(lines):
        return lines[span.line - 1]
    return None


_WIDTH = 100  # longest source excerpt shown under a diagnostic


def _window(line: str, start: int) -> tuple[str, int]:
    """The part of ``line`` shown under a diagnostic, and the caret's offset in it: long lines
    (e.g. junk input) are cut around the caret, so a message stays readable. Control
    characters are shown as spaces so the caret stays under its token."""
    line = line.rstrip("\r\n")
    if len(line) <= _WIDTH:
        return _printable(line), start
    lo = max(0, min(start - _WIDTH // 2, len(line) - _WIDTH))
    shown = line[lo : lo + _WIDTH]
    if lo > 0:
        shown, start = "..." + shown, start - lo + 3
    if lo + _WIDTH < len(line):
        shown += "..."
    return _printable(shown), start


def _printable(text: str) -> str:
    return "".join(" " if (c < " " or c == "\x7f") else c for c in text)


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

    def __reduce__(self):
        # rebuilt from its diagnostics (the default would pass the headline as them), with
        # its attributes (notes): it crosses process boundaries (``--procs``)
        return (type(self), (self.diagnostics,), self.__dict__)


def render(diagnostics: Iterable[Diagnostic]) -> str:
    return "\n\n".join(d.render() for d in diagnostics)
