"""The ``hyctas`` command line: a thin layer over the library.

Exit codes (black's convention): 0 success; 1 invalid input, or `fmt --check` would change a
file; 2 usage errors and files that cannot be read; 123 an internal error (a bug: please
report it; the traceback is written to a file). What the commands share (reading inputs,
sizes, ``--config``, the exception-to-exit-code edge) is :mod:`hyctas_dsl.cli_support`.
Commands that need torch import it inside the command, so ``hyctas --help``, ``validate``,
``fmt`` and ``draw`` start fast and work without torch.
"""

from __future__ import annotations

import difflib
import importlib
import json
import sys
from typing import List, Optional

import typer

from hyctas_dsl.language.api import canonical_key
from hyctas_dsl.language.ast import Module
from hyctas_dsl.cli_support import exit_code_for, fail_usage, load_checked, load_space, read_source  # noqa: F401
from hyctas_dsl.language.errors import HyctasError
from hyctas_dsl.fileio import write_text_atomic
from hyctas_dsl.language.parser import parse
from hyctas_dsl.language.printer import dumps
from hyctas_dsl.language.validate import check_module

LANGUAGE_TOUR = """\
hyctas describes HyCTAS search spaces and architectures in a small text language:

\b
    hyctas 1
\b
    # a two-branch architecture: one stays at stride 8, one goes to 16
    arch tiny {
      filters 12
      layers 4
      head (8, 16) output_stride 8
      branch hi {
        1..4 conv w12
      }
      branch lo {
        1 conv w12
        2 zconv w8 down
        3 attn(heads=4) w8
        4 zconv2 w12
      }
      fuse lo -> hi after 3
    }

Ops: skip conv zconv zconv2 attn. Widths are twelfths (w4 .. w12); `down` halves the
resolution. `fuse a -> b after L` adds branch a's layer-L output to branch b. The head lists
the branches' final strides. See docs/language.md for every construct and rule.
"""

app = typer.Typer(
    name="hyctas",
    help=LANGUAGE_TOUR,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Commands that live in their own modules register themselves here (each module defines
# ``register(app)``), so the CLI grows without one file owning every command.
COMMAND_MODULES: list[str] = [
    "hyctas_dsl.commands.draw",
    "hyctas_dsl.commands.compile",
    "hyctas_dsl.commands.train_supernet",
    "hyctas_dsl.commands.search",
    "hyctas_dsl.commands.train",
    "hyctas_dsl.commands.eval",
    "hyctas_dsl.commands.bench",
    "hyctas_dsl.commands.export",
]


@app.command()
def validate(
    files: List[str] = typer.Argument(..., help="Source files (.hy); `-` reads standard input."),
    space: Optional[str] = typer.Option(
        None, "--space", help="Check archs against this space file (default: a space in the same file, else the paper's)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report for tools instead of text."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print errors only."),
) -> None:
    """Check files against the language and the search space: syntax, the paper's four
    search constraints (section 3.4) and every structural rule. All violations are reported,
    each as `file:line:col: CODE message` with the source line and a caret.

    Exit 0 when every file is valid, 1 when any is not, 2 when a file cannot be read.
    """
    sp = load_space(space)
    report = []
    n_bad = 0
    for path in files:
        name = "<stdin>" if path == "-" else path
        try:
            text = read_source(path)  # a file that is not UTF-8 (HY005) is invalid, not unreadable
            module = parse(text, name)
            diags = [d.with_source(text, name) for d in check_module(module, sp)]
        except HyctasError as e:
            module, diags = None, list(e.diagnostics)
        n_bad += bool(diags)
        entry = {"path": name, "valid": not diags, "diagnostics": [d.to_json() for d in diags]}
        if module is not None and not diags:
            entry["archs"] = [{"name": a.name, "key": canonical_key(a)} for a in module.archs]
            entry["spaces"] = [s.name for s in module.spaces]
        report.append(entry)
        if not as_json:
            for d in diags:
                typer.echo(d.render() + "\n")
            if not diags and not quiet:
                names = ", ".join(
                    [f"arch {a.name}" for a in module.archs] + [f"space {s.name}" for s in module.spaces]
                ) or "no declarations"
                typer.echo(f"{name}: ok ({names})")
    if as_json:
        typer.echo(json.dumps({"files": report, "valid": n_bad == 0}, indent=2))
    elif n_bad:
        n_err = sum(len(r["diagnostics"]) for r in report)
        typer.echo(f"Found {n_err} error{'s' * (n_err != 1)} in {n_bad} file{'s' * (n_bad != 1)}.")
    raise typer.Exit(1 if n_bad else 0)


@app.command()
def fmt(
    files: List[str] = typer.Argument(..., help="Source files to format in place; `-` formats standard input to standard output."),
    check: bool = typer.Option(False, "--check", help="Change nothing; exit 1 if any file would change."),
    diff: bool = typer.Option(False, "--diff", help="Change nothing; print a unified diff of what would change."),
) -> None:
    """Rewrite files in the canonical form: one fact per line, runs of three or more
    identical cells as `a..b`, comments kept. Files are written atomically.

    Exit 0 when done (or nothing would change), 1 when `--check` finds a file to change or a
    file does not parse, 2 when a file cannot be read.
    """
    changed = bad = 0
    for path in files:
        try:
            text = read_source(path)
            module = parse(text, "<stdin>" if path == "-" else path)
        except HyctasError as e:
            # With `-`, standard output is the formatted text: errors go to standard error.
            typer.echo(e.render() + "\n", err=path == "-")
            bad += 1
            continue
        out = dumps(module)
        _check_stable(module, out, path)
        if path == "-":
            if not (check or diff):
                sys.stdout.write(out)
            changed += out != text
            continue
        if out == text:
            continue
        changed += 1
        if diff:
            typer.echo("".join(difflib.unified_diff(text.splitlines(True), out.splitlines(True), path, path)), nl=False)
        elif check:
            typer.echo(f"would reformat {path}")
        else:
            write_text_atomic(path, out)
            typer.echo(f"reformatted {path}", err=True)
    if bad or (check and changed):
        raise typer.Exit(1)


def _check_stable(module: Module, out: str, path: str) -> None:
    """Black's safety net: the output must parse to the same AST and format to itself."""
    again = parse(out, path)
    if again != module or dumps(again) != out:
        typer.echo(f"hyctas: internal error: formatting {path} is not stable; nothing was written", err=True)
        raise typer.Exit(123)


@app.command()
def key(files: List[str] = typer.Argument(..., help="Source files (.hy).")) -> None:
    """Print the one-line canonical key of each arch (meta excluded), for de-duplication,
    logs and tables."""
    for path in files:
        _text, module = load_checked(path)
        for a in module.archs:
            typer.echo(f"{a.name}\t{canonical_key(a)}")


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


def main() -> None:
    _register_commands()
    try:
        app()
    except (SystemExit, typer.Exit):
        raise
    except BaseException as e:  # noqa: BLE001 - the CLI edge: user errors keep their codes, bugs exit 123
        sys.exit(exit_code_for(e))


if __name__ == "__main__":
    main()
