"""``hyctas draw``: Figure-4 diagrams of architectures, Figure-1 diagrams of spaces, diffs.

A thin layer over :mod:`hyctas_dsl.draw`. ``-o x.dot`` needs only the Python ``graphviz``
package; svg/png/pdf need Graphviz's ``dot`` program. Never imports torch.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional

import typer

from hyctas_dsl.language.ast import Arch
from hyctas_dsl.cli_support import fail_usage, load_checked, load_space, pick
from hyctas_dsl.fileio import write_bytes_atomic

FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot", ".gv": "dot"}
INSTALL_DOT = (
    "install Graphviz, which provides it: on Debian/Ubuntu `sudo apt-get install graphviz`, "
    "on macOS `brew install graphviz`, otherwise see https://graphviz.org/download/ "
    "(or write the diagram as DOT with `-o NAME.dot`)"
)
# PNGs for papers and READMEs: sharper than Graphviz's default 96 dpi.
PNG_DPI = "144"


def render(graph, fmt: str) -> bytes:
    """The diagram as ``fmt`` bytes; DOT needs no Graphviz binary."""
    if fmt == "dot":
        return graph.source.encode("utf-8")
    if fmt == "png":
        graph = graph.copy()
        graph.attr("graph", dpi=PNG_DPI)
    return graph.pipe(format=fmt)


def register(app: typer.Typer) -> None:
    @app.command()
    def draw(
        files: List[str] = typer.Argument(..., metavar="FILE", help="A .hy file (an arch or a space); with --diff, two files."),
        output: str = typer.Option(..., "--output", "-o", metavar="OUT", help="Output file: .svg, .png, .pdf or .dot (.gv)."),
        diff: bool = typer.Option(False, "--diff", help="Draw two architectures on one grid, differences highlighted."),
        arch: Optional[List[str]] = typer.Option(
            None, "--arch", metavar="NAME", help="Which declaration to draw when a file has several; with --diff, once for both files or once per file."
        ),
        space: Optional[str] = typer.Option(
            None, "--space", metavar="SPACE.hy", help="Check archs against this space file (default: a space in the same file, else the paper's)."
        ),
    ) -> None:
        """Draw an architecture (the paper's Figure 4), a search space (Figure 1) or, with
        --diff, the difference of two architectures.

        Rows are strides 8/16/32, columns layers; cells are coloured by op and show their
        width; shared prefixes are drawn once; fusion nodes are dashed gates.

        Exit 0 when written, 1 when an input is not valid, 2 for usage errors, unreadable
        files, or a format that needs the missing Graphviz `dot` program.
        """

        out = Path(output)
        fmt = FORMATS.get(out.suffix.lower())
        if fmt is None:
            raise fail_usage(f"{output}: unknown output format `{out.suffix or '(none)'}`; use .svg, .png, .pdf or .dot")
        if diff and len(files) != 2:
            raise fail_usage(f"--diff needs two files (A and B), got {len(files)}")
        if not diff and len(files) != 1:
            raise fail_usage(f"draw takes one file, got {len(files)}; to compare two architectures add --diff")
        names = list(arch or [])
        if len(names) > len(files):
            raise fail_usage(f"--arch given {len(names)} times for {len(files)} file(s)")
        if fmt != "dot" and shutil.which("dot") is None:
            raise fail_usage(f"writing .{fmt} needs Graphviz's `dot` program, which is not on PATH; {INSTALL_DOT}")
        if not out.parent.is_dir():
            raise fail_usage(f"{output}: directory {str(out.parent)!r} does not exist")

        from hyctas_dsl import draw as drawing

        sp = load_space(space)
        if diff:
            picked = []
            for i, path in enumerate(files):
                _text, module = load_checked(path, sp)
                name = names[i] if i < len(names) else (names[0] if names else None)
                picked.append(pick(module, path, name, want_arch=True))
            graph = drawing.draw_diff(picked[0], picked[1])
        else:
            _text, module = load_checked(files[0], sp)
            decl = pick(module, files[0], names[0] if names else None, want_arch=False)
            graph = drawing.draw(decl) if isinstance(decl, Arch) else drawing.draw_space(decl)

        import graphviz

        try:
            data = render(graph, fmt)
        except graphviz.ExecutableNotFound:
            raise fail_usage(f"writing .{fmt} needs Graphviz's `dot` program, which is not on PATH; {INSTALL_DOT}") from None
        except graphviz.CalledProcessError as e:  # dot itself failed: our DOT is wrong, a bug
            stderr = (e.stderr or b"").decode("utf-8", "replace").strip()
            typer.echo(f"hyctas: internal error: Graphviz could not render the diagram: {stderr}", err=True)
            raise typer.Exit(123) from None
        try:
            write_bytes_atomic(out, data)
        except OSError as e:
            raise fail_usage(f"{output}: cannot write ({e.strerror or e})") from None
        typer.echo(f"wrote {output}", err=True)
