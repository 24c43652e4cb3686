"""Subnet views built from cached pieces (``compiler.build.view_skeleton``): a view trains
exactly like its standalone export on the sliced weights (outputs, gradients, BN statistics),
views that share cached templates and forward code never interfere, and slices cached in eval
mode follow optimizer steps."""

from __future__ import annotations

import pytest
import torch

from hyctas_dsl.compiler import Supernet, export, set_drop_path
from hyctas_dsl.compiler.build import _LRU
from hyctas_dsl.compiler.supernet import slice_to

from tests.conftest import IN_CI
from tests.test_compiler_ops import random_arch, small_space
from tests.test_compiler_supernet import TWO, arch_of

pytestmark = pytest.mark.usefixtures("one_thread")

# TWO with other widths and ops in the same places: the same nodes and wiring, so the same
# generated forward, but other modules.
TWO_OTHER = TWO.replace(" conv w12", " zconv w10").replace("skip w8", "conv w6").replace("4 zconv2 w8", "4 attn(heads=2) w6")


def _scatter(grad, base, slot):
    """``grad`` of a slice, put where the slice sits in ``base``'s shape (zeros elsewhere)."""
    z = torch.zeros_like(base, requires_grad=True)
    return torch.autograd.grad(slice_to(z, slot.shape, slot.groups), z, grad)[0]


@pytest.mark.parametrize("seed", range(3 if IN_CI else 12))
def test_view_trains_exactly_like_its_export(seed):
    torch.manual_seed(seed)
    sn = Supernet(small_space((2, 4), 4), classes=4).train()
    arch = random_arch(100 + seed, filters=[2, 4][seed % 2])
    model = export(arch, sn).train()  # a copy of the slices, taken before the view runs
    view = sn.subnet(arch).train()
    assert not list(view.net.parameters()) and not list(view.net.buffers())  # tensors come from the supernet
    x = torch.randn(2, 3, 40, 56)
    sn.zero_grad(set_to_none=True)
    out_view = view(x)
    out_model = model(x)
    assert (out_view - out_model).abs().max().item() < 1e-5
    out_view.square().mean().backward()
    out_model.square().mean().backward()
    # Two nodes may slice one supernet module (two branches with the same op at the same
    # layer and stride): its gradient is the sum of theirs, its statistics updated twice.
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    uses: dict[int, int] = {}
    for slot in view._slots:
        uses[id(slot.store[slot.leaf])] = uses.get(id(slot.store[slot.leaf]), 0) + 1
    want: dict[int, torch.Tensor] = {}
    bases = {}
    for slot in view._slots:
        base = slot.store[slot.leaf]
        if slot.is_param:
            bases[id(base)] = base
            want[id(base)] = want.get(id(base), 0) + _scatter(params.pop(slot.name).grad, base, slot)
        elif uses[id(base)] == 1:  # running statistics landed in the supernet's buffers
            assert torch.allclose(slice_to(base, slot.shape, slot.groups), buffers[slot.name], atol=1e-6), slot.name
    assert not params  # every parameter of the export is a slot of the view
    for key, base in bases.items():
        assert base.grad is not None and torch.allclose(base.grad, want[key], atol=1e-6, rtol=1e-4)
    assert max(uses.values()) > 1 or seed != 2  # the case of a shared module is covered


def test_two_live_views_do_not_interfere():
    torch.manual_seed(0)
    sn = Supernet(small_space((2, 4), 4), classes=5)
    a, other = arch_of(TWO), arch_of(TWO_OTHER)
    v1, v2, v3 = sn.subnet(a), sn.subnet(a), sn.subnet(other)
    # the same forward code, compiled once; modules of their own
    assert type(v1.net) is type(v3.net) and type(v1.net) is type(v2.net)
    assert v1.plan.forward == v3.plan.forward
    mods1 = {id(m) for m in v1.net.modules()}
    assert not mods1 & {id(m) for m in v2.net.modules()}
    assert not mods1 & {id(m) for m in v3.net.modules()}
    # state set on one view stays in it: drop path, mode, hooks
    set_drop_path(v1, 0.5)
    v1.train()
    v2.eval()
    v3.eval()
    calls = []
    v1.net.hi_1.register_forward_hook(lambda *_: calls.append(1))
    assert v2.net.hi_4.drop_path == 0.0 and not any(m.training for m in v2.net.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # interleaved; v1 in training mode moves the BN statistics each time
        v1(x)
        got3, want3 = v3(x), export(other, sn).eval()(x)
        v1(x)
        got2, want2 = v2(x), export(a, sn).eval()(x)
    assert calls == [1, 1]
    assert (got2 - want2).abs().max() < 1e-5 and (got3 - want3).abs().max() < 1e-5
    # a view built afterwards starts clean (the cached templates were not touched)
    v4 = sn.subnet(a)
    assert v4.net.hi_4.drop_path == 0.0 and all(m.training for m in v4.net.modules())
    assert not any(m._forward_hooks for m in v4.net.modules())
    assert all(getattr(m, "weight", None) is None for m in v4.net.modules())  # tensors unbound until a forward


def test_eval_cache_follows_an_optimizer_step():
    """A view in eval mode caches its slices; an AdamW step taken through another view (in
    place, bumping the tensors' versions) must show in its next output."""
    torch.manual_seed(1)
    sn = Supernet(small_space((2, 4), 4), classes=5)
    arch = arch_of(TWO)
    evaluator = sn.subnet(arch).eval()
    trainer = sn.subnet(arch).train()
    opt = torch.optim.AdamW(sn.parameters(), lr=0.05)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = evaluator(x)
    opt.zero_grad()
    trainer(torch.randn(2, 3, 32, 32)).square().mean().backward()
    opt.step()
    with torch.no_grad():
        after = evaluator(x)
        want = export(arch, sn).eval()(x)
    assert (after - before).abs().max() > 1e-3
    assert (after - want).abs().max() < 1e-5


def test_bounded_cache_evicts_the_least_recently_used():
    dropped = []
    cache = _LRU(2, evict=dropped.append)
    made = []

    def make(v):
        made.append(v)
        return v

    assert cache.fetch("a", lambda: make(1)) == 1
    assert cache.fetch("b", lambda: make(2)) == 2
    assert cache.fetch("a", lambda: make(9)) == 1  # a hit: not made again, now the most recent
    assert cache.fetch("c", lambda: make(3)) == 3
    assert made == [1, 2, 3] and dropped == [2] and list(cache) == ["a", "c"]
