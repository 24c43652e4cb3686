"""What the front end knows about each op: its arguments and whether it may downsample.

The torch modules live in ``hyctas_dsl.compiler.ops``; this table is the torch-free half that
the validator, the cost model and the genome share (paper section 3.3, Table 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ArgSpec", "OpSpec", "OPS", "attn_bottleneck", "resolved_args"]


@dataclass(frozen=True)
class ArgSpec:
    kind: type  # int or float
    default: int | float
    low: float  # inclusive
    high: float  # inclusive
    doc: str


@dataclass(frozen=True)
class OpSpec:
    name: str
    doc: str
    can_down: bool = True
    args: dict[str, ArgSpec] = field(default_factory=dict)


OPS: dict[str, OpSpec] = {
    "skip": OpSpec(
        "skip",
        "identity; a 1x1 conv + BN where the channel count changes",
        can_down=False,  # constraint 3 (section 3.4): a downsampling cell is never skip
    ),
    "conv": OpSpec("conv", "3x3 conv + BN + ReLU"),
    "zconv": OpSpec(
        "zconv",
        "lightweight conv: bilinear x0.5, 3x3 conv + BN, bilinear x2, plus a 1x1 conv + BN "
        "bypass at full resolution, sum, ReLU",
    ),
    "zconv2": OpSpec("zconv2", "as zconv with two 3x3 convs"),
    "attn": OpSpec(
        "attn",
        "memory-efficient self-attention: 1x1 reduce to a bottleneck, multi-head attention "
        "without FFN, 1x1 back, plus a 1x1 bypass, sum, ReLU",
        args={
            "heads": ArgSpec(int, 4, 1, 64, "number of attention heads"),
            "ratio": ArgSpec(float, 0.5, 0.0625, 1.0, "bottleneck width d as a fraction of C_out"),
        },
    ),
}


def resolved_args(name: str, args: tuple[tuple[str, int | float], ...]) -> dict[str, int | float]:
    """An op's arguments with defaults filled in."""
    spec = OPS[name]
    out = {k: a.default for k, a in spec.args.items()}
    out.update(dict(args))
    return out


def attn_bottleneck(c_out: int, heads: int, ratio: float) -> int:
    """Bottleneck width d of ``attn``: ratio * C_out rounded to a multiple of the heads."""
    d = int(round(c_out * ratio / heads)) * heads
    return max(d, heads)
