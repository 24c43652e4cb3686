"""What every ``hyctas`` command shares: reading and validating inputs, the one size parser,
choosing a declaration, TOML ``--config`` for long jobs, and the CLI edge that turns every
exception into an exit code.

The commands import this module; it never imports a command or :mod:`hyctas_dsl.cli`, and it
never imports torch (the front end must start without it).

Exit codes (black's convention): 0 success; 1 invalid input (located errors), a diverged
run, or a network that does not fit in memory; 2 files that cannot be read, bad options, a
busy or unusable run directory, a missing optional package; 123 an internal error (a bug:
one line on standard error, the full traceback written to a file); 130 interrupted.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import typer

from hyctas_dsl.language.api import decode
from hyctas_dsl.language.ast import Arch, Module, Space
from hyctas_dsl.language.errors import HyctasError
from hyctas_dsl.language.parser import parse
from hyctas_dsl.language.validate import TASKS, check_module

__all__ = ["fail_usage", "read_source", "load_space", "load_checked", "pick", "load_arch", "with_task", "TASK_HELP", "parse_size",
           "size_option", "out_dir_option", "default_help", "job_config", "MAX_CLASSES", "run_cli_job", "exit_code_for", "INSTALL_TRAIN"]

T = TypeVar("T")

# Output classes a command accepts: far above any segmentation data set (ADE20K: 150), far
# below what would overflow a tensor size.
MAX_CLASSES = 10_000

INSTALL_TRAIN = "install hyctas[train] (pip install 'hyctas[train]')"
# Packages of the [train] extra: a missing one is the user's install, not a bug.
_TRAIN_EXTRA = {"torch", "safetensors", "onnx", "onnxscript", "onnxruntime", "sklearn", "PIL", "matplotlib", "tqdm"}


# Files and directories the user named that cannot be used: their mistake (exit 2), not a bug.
_USER_ERRNOS = {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS,
                errno.ENAMETOOLONG, errno.ELOOP}


def fail_usage(message: str) -> "typer.Exit":
    """Print one ``hyctas: error:`` line; returns the exit (code 2) for the caller to raise."""
    typer.echo(f"hyctas: error: {message}", err=True)
    return typer.Exit(2)


def read_source(path: str) -> str:
    """Read a file for a command; one-line error and exit 2 when it cannot be read."""
    if path == "-":
        return decode(sys.stdin.buffer.read(), "<stdin>")
    p = Path(path)
    try:
        if p.is_dir():
            raise fail_usage(f"{path}: is a directory, not a .hy file")
        data = p.read_bytes()
    except FileNotFoundError:
        raise fail_usage(f"{path}: no such file") from None
    except PermissionError:
        raise fail_usage(f"{path}: permission denied") from None
    except OSError as e:
        raise fail_usage(f"{path}: cannot read ({e.strerror or e})") from None
    return decode(data, path)


def load_space(path: Optional[str]) -> Optional[Space]:
    """The ``--space`` option: a file with exactly one valid space."""
    if path is None:
        return None
    try:
        text = read_source(path)
        module = parse(text, path)
    except HyctasError as e:
        typer.echo(e.render(), err=True)
        raise fail_usage(f"{path}: the space file does not parse") from None
    if len(module.spaces) != 1:
        raise fail_usage(f"{path}: expected exactly one `space`, found {len(module.spaces)}")
    diags = check_module(Module(decls=module.spaces))
    if diags:
        typer.echo(HyctasError(diags).with_source(text, path).render(), err=True)
        raise fail_usage(f"{path}: the space is not valid")
    return module.spaces[0]


def load_checked(path: str, space: Optional[Space] = None) -> tuple[str, Module]:
    """Read, parse and validate one file for a command; print errors and exit 1 if invalid."""
    try:
        text = read_source(path)
        module = parse(text, path)
        diags = check_module(module, space)
        if diags:
            raise HyctasError(diags).with_source(text, path)
    except HyctasError as e:
        typer.echo(e.render())
        raise typer.Exit(1) from None
    return text, module


def _decl_names(module: Module) -> str:
    return ", ".join(f"{'arch' if isinstance(d, Arch) else 'space'} {d.name}" for d in module.decls) or "none"


def pick(module: Module, path: str, name: Optional[str], *, want_arch: bool) -> Arch | Space:
    """The declaration of ``module`` a command works on: the one named ``name``, or the only
    arch (a space beside it is that arch's space, as in the files the search emits), or the
    only declaration."""
    decls = list(module.archs) if want_arch or (name is None and len(module.archs) == 1) else list(module.decls)
    what = "arch" if want_arch else "arch or space"
    if name is not None:
        for d in decls:
            if d.name == name:
                return d
        raise fail_usage(f"{path}: no {what} named `{name}` (it declares: {_decl_names(module)})")
    if len(decls) == 1:
        return decls[0]
    if not decls:
        raise fail_usage(f"{path}: no {what} in the file (it declares: {_decl_names(module)})")
    raise fail_usage(f"{path}: declares several ({_decl_names(module)}); choose one with --arch NAME")


def load_arch(file: str, arch_name: Optional[str], space: Optional[str]) -> tuple[Arch, str]:
    """The arch of ``file`` (validated as `hyctas validate` does; located errors, exit 1)."""
    sp = load_space(space)
    text, module = load_checked(file, sp)
    return pick(module, file, arch_name, want_arch=True), text


def with_task(arch: Arch, task: Optional[str]) -> Arch:
    """``arch`` with its task replaced by ``--task`` (None keeps the arch's own)."""
    if task is None or task == arch.task:
        return arch
    if task not in TASKS:
        raise fail_usage(f"--task must be one of {', '.join(TASKS)}, not {task!r}")
    return arch.model_copy(update={"task": task})


TASK_HELP = "semantic | panoptic [default: the arch's `task`]; panoptic adds the centre heatmap and offset branches."


_SIZE = re.compile(r"\s*(\d{1,9})\s*[xX]\s*(\d{1,9})\s*")


def parse_size(text: Optional[str], option: str = "--input") -> tuple[int, int]:
    """``'1024x2048'`` -> (1024, 2048). Anything else raises ValueError with the one message
    every command prints (exit 2)."""
    m = _SIZE.fullmatch(text or "")
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"{option} must be HEIGHTxWIDTH in pixels, like 1024x2048, not {text!r}")
    return int(m.group(1)), int(m.group(2))


def size_option(text: Optional[str], option: str) -> Optional[tuple[int, int]]:
    """A size option of a command (None stays None); a bad one exits 2 before any work."""
    if text is None:
        return None
    try:
        return parse_size(text, option)
    except ValueError as e:
        raise fail_usage(str(e)) from None


def out_dir_option(path: Optional[str], option: str = "--out") -> None:
    """A directory a command will create or write into: one that is a file, or lies below
    a file, exits 2 before any work starts."""
    if path is None:
        return
    p = Path(path)
    for q in [p, *p.parents]:
        if q.exists():
            if not q.is_dir():
                where = "is a file" if q == p else f"is below the file {q}"
                raise fail_usage(f"{option} {path}: {where}; choose a directory")
            return


def default_help(model: type, field: str, note: str = "") -> str:
    """``[default: X]`` for an option's help, read from the config model, where the default
    is kept (once)."""
    value = model.model_fields[field].get_default(call_default_factory=True)
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return f"[default: {value}{'; ' + note if note else ''}]"


def job_config(model: type[T], table: str, config: Optional[str], overrides: dict[str, Any]) -> T:
    """A long job's config: the pydantic model's defaults < the ``[table]`` of the TOML file
    ``config`` < command-line options (those given). Errors exit 2 with one line naming the
    file and key; nothing has started yet."""
    from hyctas_dsl.jobs.config import ConfigError, load_config, merge

    try:
        tables = load_config(config)
        return merge(model, config, tables.get(table, {}), overrides)
    except ConfigError as e:
        raise fail_usage(str(e)) from None


# ---- the CLI edge


def _missing_package(e: BaseException) -> Optional[str]:
    if isinstance(e, ModuleNotFoundError) and e.name:
        top = e.name.split(".")[0]
        if top in _TRAIN_EXTRA:
            return top
    return None


def _out_of_memory(e: BaseException) -> Optional[str]:
    """The first line of an allocation failure (torch raises RuntimeError subclasses)."""
    if isinstance(e, MemoryError):
        return str(e) or "MemoryError"
    if isinstance(e, RuntimeError):
        msg = (str(e).splitlines() or [""])[0]
        low = msg.lower()
        if "out of memory" in low or "can't allocate memory" in low or "failed to allocate" in low or (
            "alloc" in low and "bytes" in low
        ):
            return msg
    return None


def _write_traceback(e: BaseException) -> str:
    fd, path = tempfile.mkstemp(prefix="hyctas-crash-", suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f"hyctas {' '.join(sys.argv[1:])}\n\n")
        f.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))
    return path


def exit_code_for(e: BaseException, memory: str = "") -> int:
    """Print what the user needs (one line, or located errors) for an exception that reached
    the CLI edge; return the exit code. Known user errors keep their codes; anything else is
    a bug: one line naming the file with the full traceback, exit 123. ``memory`` says what
    to make smaller when the network does not fit (e.g. "at 1024x2048 on cpu; try a smaller
    --input")."""
    from hyctas_dsl.data.base import DataError
    from hyctas_dsl.jobs.errors import ConfigError, JobError, TrainingDiverged

    def say(msg: str) -> None:
        typer.echo(f"hyctas: {msg}", err=True)

    if isinstance(e, HyctasError):
        if all(d.code == "HY409" for d in e.diagnostics):
            say(f"error: {e.diagnostics[0].headline()}")
            return 2
        typer.echo(e.render(), err=True)
        return 1
    if isinstance(e, TrainingDiverged):
        say(f"training diverged: {e}")
        return 1
    if isinstance(e, (ConfigError, JobError, DataError)):
        say(f"error: {e}")
        return 2
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)) or (
        isinstance(e, OSError) and e.errno in _USER_ERRNOS
    ):
        say(f"error: {e.filename}: {e.strerror}" if e.filename and e.strerror else f"error: {e}")
        return 2
    # ENOSPC, EDQUOT; safetensors reports a full disk as its own error with the OS message
    if (isinstance(e, OSError) and e.errno in (28, 122)) or "No space left on device" in str(e):
        where = getattr(e, "filename", None) or "the output"
        say(f"error: no space left on the device writing {where}; free some space and rerun"
            " (a run continues from its last checkpoint with --resume)")
        return 2
    if isinstance(e, KeyboardInterrupt):
        say("interrupted; the last checkpoint is kept (use --resume)")
        return 130
    pkg = _missing_package(e)
    if pkg:
        say(f"error: this command needs the `{pkg}` package: {INSTALL_TRAIN}")
        return 2
    oom = _out_of_memory(e)
    if oom:
        say(f"error: out of memory {memory or '(try a smaller input size or batch)'}: {oom[:200]}")
        return 1
    path = _write_traceback(e)
    say(f"internal error (a bug, please report it): {type(e).__name__}: {str(e)[:200]}; "
        f"the full traceback is in {path}")
    return 123


def run_cli_job(job: Callable[[], T], memory: str = "") -> T:
    """Run a command's work; every exception leaves as one message and its exit code
    (``memory``: see :func:`exit_code_for`)."""
    try:
        return job()
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - the CLI edge: nothing passes as a traceback
        raise typer.Exit(exit_code_for(e, memory)) from None
