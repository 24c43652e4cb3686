"""Supernet weight sharing: views whose parameters are the supernet's, slices, gradients and
BN statistics that land in the supernet, shared prefixes run once, equality with the
standalone export, and HY4xx errors for archs the supernet cannot hold."""

from __future__ import annotations

import pytest
import torch

from hyctas_dsl.language.api import loads
from hyctas_dsl.compiler import Supernet, export
from hyctas_dsl.language.errors import HyctasError

from tests.conftest import IN_CI
from tests.test_compiler_ops import random_arch, small_space

TWO = """hyctas 1
arch two {
  filters 2
  layers 4
  head (8, 16) output_stride 4
  branch hi {
    1 conv w12
    2 conv w12
    3 skip w8
    4 attn(heads=2) w10
  }
  branch lo {
    1 conv w12
    2 conv w12
    3 zconv w6 down
    4 zconv2 w8
  }
  fuse lo -> hi after 3
  fuse hi -> lo after 2
}
"""


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    return Supernet(small_space((2, 4), 4), classes=5)


def arch_of(text):
    return loads(text, check_rules=False).archs[0]


def test_supernet_holds_every_position(supernet):
    keys = set(supernet.cells)
    assert "l1_s8_keep_conv" in keys and "l1_s8_down_attn" in keys
    assert "l1_s16_keep_conv" not in keys  # stride 16 is unreachable before one downsampling
    assert "l2_s16_down_zconv2" in keys and "l3_s32_keep_attn" in keys
    assert not any(k.endswith("down_skip") for k in keys)
    assert "l1_s8_to_s16" in supernet.fusions and "l3_s32_to_s8" in supernet.fusions
    assert "l4_s8_to_s8" not in supernet.fusions  # no node after the last layer
    assert sorted(supernet.heads) == sorted(["h8", "h16", "h32", "h8_16", "h8_32", "h8_16_32"])
    conv = supernet.cells["l3_s16_keep_conv"].conv.conv
    assert tuple(conv.weight.shape) == (64, 64, 3, 3)  # 16 * F_max(4) channels at stride 16


def test_view_parameters_are_the_supernets(supernet):
    view = supernet.subnet(arch_of(TWO))
    ids = {id(p) for p in supernet.parameters()}
    params = list(view.parameters())
    assert params and all(id(p) in ids for p in params)
    assert sum(p.numel() for p in view.subnet_parameters()) == sum(p.numel() for p in export(arch_of(TWO), classes=5).parameters())


def test_gradients_flow_into_the_sliced_region_only(supernet):
    arch = arch_of(TWO)
    view = supernet.subnet(arch).train()
    supernet.zero_grad(set_to_none=True)
    view(torch.randn(2, 3, 64, 64)).square().mean().backward()
    # hi.3 is `skip w8` at stride 8 after a w12 cell: its 1x1 projection 16 -> 11 channels
    # of F=2, sliced from the supernet's 32 -> 32 projection of F=4.
    g = supernet.cells["l3_s8_keep_skip"].proj.conv.weight.grad
    assert g is not None and g[:11, :16].abs().sum() > 0
    assert g[11:].abs().sum() == 0 and g[:, 16:].abs().sum() == 0
    assert supernet.cells["l3_s8_keep_conv"].conv.conv.weight.grad is None  # op not chosen


def test_bn_running_stats_land_in_the_supernet(supernet):
    view = supernet.subnet(arch_of(TWO)).train()
    bn = supernet.stem.conv1.bn
    before = bn.running_mean.clone()
    n = bn.num_batches_tracked.clone()
    with torch.no_grad():
        view(torch.randn(2, 3, 32, 32) * 3 + 1)
    assert not torch.equal(bn.running_mean[:4], before[:4])  # 2F = 4 channels used
    assert torch.equal(bn.running_mean[4:], before[4:])
    assert bn.num_batches_tracked == n + 1


def test_shared_prefix_is_computed_once(supernet):
    view = supernet.subnet(arch_of(TWO))
    g = view.graph
    assert g.nodes["hi.1"]["branches"] == ["hi", "lo"] and g.nodes["hi.2"]["branches"] == ["hi", "lo"]
    assert "lo.1" not in g and "lo.2" not in g
    calls = {}
    for name, m in view.net.named_children():
        m.register_forward_hook(lambda mod, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    with torch.no_grad():
        view.eval()(torch.randn(1, 3, 32, 32))
    assert calls["hi_1"] == 1 and calls["hi_2"] == 1
    assert set(calls) == {n.attr for n in view.plan.nodes}  # only the chosen ops run


def _train_a_little(supernet, arch, steps=2):
    view = supernet.subnet(arch).train()
    opt = torch.optim.SGD(supernet.parameters(), lr=0.01, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        view(torch.randn(2, 3, 48, 48)).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("seed", range(6 if IN_CI else 20))
def test_view_equals_standalone_export(seed):
    torch.manual_seed(seed)
    sn = Supernet(small_space((2, 4), 4), classes=4)
    arch = random_arch(seed, filters=[2, 4][seed % 2])
    _train_a_little(sn, arch)  # BN statistics and weights away from their initial values
    view = sn.subnet(arch).eval()
    model = export(arch, sn).eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        diff = (view(x) - model(x)).abs().max().item()
    assert diff < 1e-5
    # standalone: its own tensors, no supernet class anywhere inside it
    ids = {t.data_ptr() for t in sn.state_dict().values()}
    assert not any(t.data_ptr() in ids for t in model.state_dict().values())
    assert not any("supernet" in type(m).__module__ or type(m).__module__.startswith("hyctas_dsl") for m in model.modules())


def _codes(fn):
    with pytest.raises(HyctasError) as e:
        fn()
    return set(e.value.codes), str(e.value)


def test_archs_that_do_not_fit_are_named(supernet):
    base = TWO
    cases = {
        "HY401": base.replace("layers 4", "layers 5").replace("4 attn(heads=2) w10", "4 attn(heads=2) w10\n 5 conv w12").replace("4 zconv2 w8", "4 zconv2 w8\n 5 conv w12"),
        "HY406": base.replace("filters 2", "filters 3"),
        "HY403": base.replace("4 zconv2 w8", "4 zconv2 w9"),
        "HY407": base.replace("attn(heads=2)", "attn(heads=2, ratio=1.0)").replace("filters 2", "filters 4"),
    }
    for code, text in cases.items():
        codes, msg = _codes(lambda: supernet.subnet(arch_of(text)))
        assert code in codes, (code, msg)
        assert len(codes) == 1, msg
    codes, msg = _codes(lambda: supernet.subnet(arch_of(base.replace("filters 2", "filters 3"))))
    assert "filters 3" in msg and "2, 4" in msg
    # located: the diagnostic points at the offending token
    with pytest.raises(HyctasError) as e:
        supernet.subnet(arch_of(base.replace("4 zconv2 w8", "4 zconv2 w9")))
    assert e.value.diagnostics[0].line == 16


def test_ops_heads_strides_the_space_lacks():
    sp = small_space((2, 4), 4).model_copy(update={"ops": ("conv", "zconv"), "heads": ((8,), (8, 16)), "strides": (8, 16), "output_strides": (8,)})
    sn = Supernet(sp, classes=5)
    codes, _ = _codes(lambda: sn.subnet(arch_of(TWO)))
    assert {"HY402", "HY405"} <= codes
    deep = arch_of(TWO.replace("3 zconv w6 down", "3 zconv w6 down").replace("head (8, 16)", "head (8, 32)").replace("4 zconv2 w8", "4 zconv2 w8 down"))
    codes, _ = _codes(lambda: sn.subnet(deep))
    assert "HY404" in codes


def test_class_count_mismatch_and_structural_errors(supernet):
    codes, msg = _codes(lambda: export(arch_of(TWO), supernet, classes=19))
    assert "HY408" in codes and "19" in msg and "5" in msg
    broken = arch_of(TWO.replace("head (8, 16)", "head (8)"))
    codes, _ = _codes(lambda: supernet.subnet(broken))
    assert "HY206" in codes
    codes, _ = _codes(lambda: export(broken))
    assert "HY206" in codes


def test_drop_path_on_a_view_reaches_its_cells(supernet):
    from hyctas_dsl.compiler import set_drop_path

    view = supernet.subnet(arch_of(TWO))
    assert set_drop_path(view, 0.3) == 2  # hi.4 attn, lo.4 zconv2; lo.3 (zconv down) has no bypass
    assert view.net.hi_4.drop_path == 0.3
    assert all(getattr(m, "drop_path", 0.0) == 0.0 for m in supernet.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        view.eval()
        assert torch.equal(view(x), view(x))


def test_cached_slices_follow_supernet_updates():
    """Without autograd a view reuses its slices; in-place updates, BN recalibration under
    no_grad and replaced tensors must still show."""
    torch.manual_seed(3)
    sn = Supernet(small_space((2, 4), 4), classes=5)
    arch = arch_of(TWO)
    view = sn.subnet(arch).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        view(x)
        for p in sn.parameters():  # an optimizer step, in place
            p.mul_(0.9).add_(0.01)
        assert (view(x) - export(arch, sn).eval()(x)).abs().max() < 1e-5
        view.train()  # BN recalibration: statistics must land in the supernet
        bn = sn.stem.conv1.bn
        before = bn.running_mean.clone()
        view(torch.randn(2, 3, 32, 32) * 2 + 1)
        assert not torch.equal(bn.running_mean[:4], before[:4])
        view.eval()
        sn.load_state_dict({k: v.clone() * 0.5 if v.is_floating_point() else v.clone() for k, v in sn.state_dict().items()}, assign=True)
        assert (view(x) - export(arch, sn).eval()(x)).abs().max() < 1e-5


def test_heads_share_one_classifier_and_old_files_keep_theirs(tmp_path):
    """Every theta's head reads the supernet's one stride-4 merge and classifier, so a step
    on a one-branch subnet trains what a three-branch subnet classifies with; a supernet
    saved with one classifier per head loads as such."""
    from hyctas_dsl.compiler.checkpoint import load_supernet, save_supernet

    torch.manual_seed(0)
    shared = Supernet(small_space((2, 4), 4), classes=5)
    assert shared.shared_classifier and "classifier.cls.conv.weight" in shared.state_dict()
    assert not any(k.startswith("heads.") and ".cls." in k for k in shared.state_dict())
    one = arch_of(TWO)
    eight = arch_of(TWO.replace("output_stride 4", "output_stride 8"))
    assert shared.subnet(eight).ops["head"].cls is shared.subnet(one).ops["head"].cls  # both output strides
    assert shared.subnet(eight).ops["head"].proj4 is None
    view = shared.subnet(one)
    view(torch.randn(2, 3, 32, 32)).sum().backward()
    w = shared.classifier["cls"].conv.weight
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert {id(p) for p in view.parameters()} >= {id(w)}
    # save + load round trip keeps the sharing; the export equals the view
    save_supernet(shared, tmp_path / "s.safetensors")
    back = load_supernet(tmp_path / "s.safetensors")
    assert back.shared_classifier
    x = torch.randn(1, 3, 32, 32)
    v = back.subnet(one).eval()
    assert torch.allclose(v(x), export(one, back).eval()(x), atol=1e-5)
    # one classifier per head: still buildable, saved and loaded as such
    per_head = Supernet(small_space((2, 4), 4), classes=5, shared_classifier=False)
    assert any(k.startswith("heads.h8.cls.") for k in per_head.state_dict())
    save_supernet(per_head, tmp_path / "p.safetensors")
    assert not load_supernet(tmp_path / "p.safetensors").shared_classifier
