"""The search spaces that ship with hyctas (archs/*.hy), loaded once."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

from hyctas_dsl.language.ast import Space

__all__ = ["paper_space", "zoo_path", "zoo_files"]


def zoo_path(name: str):
    """A file of the architecture zoo shipped as package data (``hyctas_dsl.archs``)."""
    return files("hyctas_dsl.archs").joinpath(name)


def zoo_files() -> list[str]:
    return sorted(p.name for p in files("hyctas_dsl.archs").iterdir() if p.name.endswith(".hy"))


@lru_cache(maxsize=1)
def paper_space() -> Space:
    """The paper's search space (archs/paper_space.hy): section 3.2-3.4, 4.2."""
    from hyctas_dsl.language.parser import parse

    module = parse(zoo_path("paper_space.hy").read_text(encoding="utf-8"), "paper_space.hy")
    return module.spaces[0]
