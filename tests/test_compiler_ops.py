"""The op library (compiler/ops.py) against its specification (hyctas_dsl/model/cost.py docstring),
and the random-architecture generator the other compiler tests share."""

from __future__ import annotations

import random

import pytest
import torch

from hyctas_dsl.language.ast import Arch, Branch, Cell, Fusion, Head, OpCall, Space
from hyctas_dsl.compiler import export, set_drop_path
from hyctas_dsl.compiler import ops as O
from hyctas_dsl.model.cost import op_cost
from hyctas_dsl.language.validate import check_arch

OPS = ("skip", "conv", "zconv", "zconv2", "attn")
HEADS = ((8,), (16,), (32,), (8, 16), (8, 32), (8, 16, 32))


def small_space(filters=(2, 4), layers=4) -> Space:
    return Space(
        name="small",
        filters=tuple(filters),
        layers=layers,
        strides=(8, 16, 32),
        ops=OPS,
        widths=(4, 6, 8, 10, 12),
        branch_prior=(0.2, 0.3, 0.5),
        heads=HEADS,
        output_strides=(8, 4),
    )


def random_arch(seed: int, filters: int = 4, max_layers: int = 4, name: str | None = None) -> Arch:
    """A random valid architecture built from the AST classes (small, for fast tests)."""
    rng = random.Random(seed)
    while True:
        layers = rng.randint(1, max_layers)
        head = rng.choice([h for h in HEADS if len(h) - 1 <= layers and max(h) // 8 - 1 <= layers + 0])
        ks = [{8: 0, 16: 1, 32: 2}[s] for s in head]
        if max(ks) > layers:
            continue
        branches = []
        for bi, k in enumerate(ks):
            downs = set(rng.sample(range(1, layers + 1), k))
            cells = []
            for layer in range(1, layers + 1):
                down = layer in downs
                op = rng.choice([o for o in OPS if not (down and o == "skip")])
                args = ()
                if op == "attn":
                    args = tuple(sorted({"heads": rng.choice([1, 2, 4]), "ratio": rng.choice([0.25, 0.5])}.items()))
                    args = tuple(a for a in args if rng.random() < 0.7)
                cells.append(Cell(op=OpCall(name=op, args=args), width=rng.choice([4, 6, 8, 10, 12]), down=down))
            branches.append(Branch(name=f"b{bi}", cells=tuple(cells)))
        fusions = []
        if len(branches) > 1 and layers > 1:
            for _ in range(rng.randint(0, 3)):
                src, dst = rng.sample([b.name for b in branches], 2)
                f = Fusion(src=src, dst=dst, after=rng.randint(1, layers - 1))
                if all((f.src, f.dst, f.after) != (g.src, g.dst, g.after) for g in fusions):
                    fusions.append(f)
        arch = Arch(
            name=name or f"rand{seed}",
            filters=filters,
            layers=layers,
            branches=tuple(branches),
            fusions=tuple(fusions),
            head=Head(strides=head, output_stride=rng.choice([8, 4])),
        )
        if not check_arch(arch, small_space((filters,), max_layers)):
            return arch


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# skip never downsamples (constraint 3), so it has no down position.
@pytest.mark.parametrize("op,down", [(op, d) for op in OPS for d in (False, True) if not (op == "skip" and d)])
def test_op_shapes_and_params_follow_the_spec(op, down):
    c_in, c_out, h, w = 12, 20, 16, 24
    if op == "attn":
        m = O.Attn(c_in, c_out, down, heads=2, d=10)
        args = {"heads": 2, "ratio": 0.5}
    else:
        m = O.CELL_OPS[op](c_in, c_out, down) if op != "skip" else O.Skip(c_in, c_out)
        args = {}
    y = m(torch.randn(2, c_in, h, w))
    assert y.shape == (2, c_out, h // 2 if down else h, w // 2 if down else w)
    assert _params(m) == op_cost(op, args, c_in, c_out, h, w, down).params


def test_skip_is_identity_when_widths_agree():
    x = torch.randn(1, 8, 4, 4)
    assert O.Skip(8, 8)(x) is x
    assert O.Skip(8, 8, proj=True).proj is not None


def test_zconv_down_has_no_bypass_and_attn_pools():
    assert O.ZConv(8, 8, down=True).bypass is None
    m = O.Attn(8, 8, True, 2, 4).eval()
    assert m(torch.randn(1, 8, 8, 8)).shape == (1, 8, 4, 4)


@pytest.mark.parametrize("size", [(64, 64), (33, 47), (17, 100), (1, 1)])
def test_any_input_size_gives_logits_of_that_size(size):
    torch.manual_seed(0)
    net = export(random_arch(3), classes=3).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 3, *size))
    assert y.shape == (1, 3, *size)
    assert torch.isfinite(y).all()


def test_drop_path_drops_main_path_per_sample_only_in_training():
    torch.manual_seed(0)
    m = O.ZConv(4, 4)
    x = torch.randn(64, 4, 8, 8)
    m.eval()
    ref = m(x)
    assert set_drop_path(m, 0.5) == 1 and m.drop_path == 0.5
    assert torch.equal(m(x), ref)  # eval is deterministic
    m.train()
    bypass_only = torch.relu(m.bypass(x))
    y = m(x)
    dropped = [(y[i] - bypass_only[i]).abs().max().item() < 1e-6 for i in range(64)]
    assert 5 < sum(dropped) < 59  # about half the samples lose the zoomed path
    assert not all(dropped)


def test_drop_path_scaling_is_stochastic_depth():
    torch.manual_seed(1)
    x = torch.randn(4000, 1, 1, 1) + 3.0
    y = O.stochastic_depth(x, 0.25, True)
    kept = y != 0
    assert 0.70 < kept.float().mean().item() < 0.80
    assert torch.allclose(y[kept], (x / 0.75)[kept])
    assert O.stochastic_depth(x, 0.25, False) is x


def test_set_drop_path_reaches_every_cell_with_a_bypass():
    arch = random_arch(11)
    net = export(arch, classes=2)
    n = set_drop_path(net, 0.2)
    want = sum(1 for b in net.modules() if isinstance(getattr(b, "drop_path", None), float) and b.bypass is not None)
    assert n == want
    with pytest.raises(ValueError):
        set_drop_path(net, 1.0)


def test_random_arch_generator_is_valid_and_varied():
    archs = [random_arch(s) for s in range(30)]
    assert len({len(a.branches) for a in archs}) == 3
    assert any(a.fusions for a in archs)
    assert {a.head.output_stride for a in archs} == {4, 8}


def _reference_attention(m: O.Attn, x: torch.Tensor) -> torch.Tensor:
    """The attention cell written out: softmax(Q K^T / sqrt(d_head)) V per head (section 3.3)."""
    if m.down:
        x = torch.nn.functional.avg_pool2d(x, 2)
    n, _, h, w = x.shape
    t = m.qkv(m.reduce(x)).flatten(2)  # [n, 3d, N]
    dh = m.d // m.heads
    q, k, v = (t[:, i * m.d:(i + 1) * m.d].reshape(n, m.heads, dh, h * w) for i in range(3))
    scores = torch.einsum("bhcn,bhcm->bhnm", q, k) / dh ** 0.5
    y = torch.einsum("bhnm,bhcm->bhcn", scores.softmax(-1), v).reshape(n, m.d, h, w)
    return torch.relu(m.proj(y) + m.bypass(x))


@pytest.mark.parametrize("down,heads,d,size", [(False, 4, 16, (12, 20)), (True, 2, 10, (14, 9)), (False, 1, 8, (1, 1))])
def test_attention_equals_plain_reference_attention(down, heads, d, size):
    torch.manual_seed(0)
    m = O.Attn(6, 12, down, heads, d).eval()
    x = torch.randn(2, 6, *size)
    with torch.no_grad():
        assert torch.allclose(m(x), _reference_attention(m, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_on_the_cpu_takes_the_fused_kernel_not_the_math_path(channels_last):
    # The math path builds heads x N x N scores (16 GiB for HyCTAS-L's stride-8 cell at
    # 1024x2048); a layout the fused kernel refuses falls back to it without a word.
    from torch.profiler import ProfilerActivity, profile

    m = O.Attn(8, 8, False, 2, 16).eval()
    x = torch.randn(1, 8, 16, 16)
    if channels_last:
        m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        y = m(x)
    # the output keeps the input's layout, so a channels-last network does not reorder after it
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    with torch.no_grad():
        assert torch.allclose(y, _reference_attention(m, x), atol=1e-5, rtol=1e-5)
    names = {e.name for e in prof.events()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names
    assert "aten::_scaled_dot_product_attention_math" not in names
    assert "aten::bmm" not in names
