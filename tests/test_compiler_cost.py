"""The analytic cost model (hyctas_dsl/model/cost.py) against the built modules: parameter counts
exact, MACs within 1% of torch's FlopCounterMode (2 FLOPs per MAC), for the zoo and random
architectures."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from hyctas_dsl.language.api import load
from hyctas_dsl.compiler import export
from hyctas_dsl.model.cost import arch_cost
from hyctas_dsl.language.spaces import zoo_path

from tests.conftest import IN_CI
from tests.test_compiler_ops import random_arch

ZOO = ["hyctas_s", "hyctas_m", "hyctas_l"]


def zoo_arch(name):
    with zoo_path(f"{name}.hy").open("rb") as f:
        return load(f).archs[0]


def _sdpa_cpu(q, k, v, *args, out_shape=None, **kwargs) -> int:
    # FlopCounterMode registers the CUDA attention kernels only; the CPU kernel does the same
    # two matmuls (QK^T and AV).
    return sdpa_flop_count(q, k, v)


def count_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as fc:
        model(x)
    return fc.get_total_flops() // 2


def _params(m) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("classes", [19, 150])
def test_zoo_params_exact_at_full_size(name, classes):
    arch = zoo_arch(name)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = export(arch, classes=classes)
    assert _params(model) == arch_cost(arch, (1024, 2048), classes).total.params


@pytest.mark.parametrize("name", ZOO)
def test_zoo_macs_within_one_percent(name):
    torch.set_num_threads(1)
    arch = zoo_arch(name)
    model = export(arch).eval()
    size = (64, 128)
    got = count_macs(model, torch.randn(1, 3, *size))
    want = arch_cost(arch, size).total.macs
    assert abs(got - want) <= 0.01 * want, (got, want)


@pytest.mark.parametrize("seed", range(12 if IN_CI else 40))
def test_random_archs_params_exact_and_macs_within_one_percent(seed):
    torch.set_num_threads(1)
    arch = random_arch(seed)
    size = [(64, 64), (40, 72), (96, 32)][seed % 3]
    classes = 3 + seed % 5
    model = export(arch, classes=classes).eval()
    rep = arch_cost(arch, size, classes)
    assert _params(model) == rep.total.params
    got = count_macs(model, torch.randn(1, 3, *size))
    assert abs(got - rep.total.macs) <= 0.01 * rep.total.macs, (got, rep.total.macs)


def test_per_row_params_match_the_modules():
    """Each cost row (stem, cell, fusion, head) counts exactly its module's parameters."""
    from hyctas_dsl.compiler import lower

    arch = random_arch(5)
    plan = lower(arch, 7)
    model = export(arch, classes=7)
    rows = {r.node: r.cost.params for r in arch_cost(arch, (64, 64), 7).rows}
    for n in plan.nodes:
        assert _params(getattr(model, n.attr)) == rows[n.node], n.node


# Every (op, keeps-or-downsamples) position an arch can have: skip never downsamples.
@pytest.mark.parametrize(
    "op,down", [(op, d) for op in ("skip", "conv", "zconv", "zconv2", "attn") for d in (False, True) if not (op == "skip" and d)]
)
def test_each_op_macs_exact(op, down):
    """Per op, at a size where attention's N^2 term dominates, MACs agree exactly."""
    from hyctas_dsl.compiler import ops as O
    from hyctas_dsl.model.cost import op_cost

    c_in, c_out, h, w = 16, 24, 32, 48
    args = {"heads": 4, "ratio": 0.5} if op == "attn" else {}
    m = O.Attn(c_in, c_out, down, 4, 12) if op == "attn" else (O.Skip(c_in, c_out) if op == "skip" else O.CELL_OPS[op](c_in, c_out, down))
    got = count_macs(m.eval(), torch.randn(1, c_in, h, w))
    assert got == op_cost(op, args, c_in, c_out, h, w, down).macs


@pytest.mark.parametrize("size", [(32, 64), (1, 1), (20, 33)])
def test_tiny_inputs_run_and_are_counted(size):
    """At stride 32 a <= 32 px input is one pixel: zconv's half resolution stays one pixel."""
    arch = zoo_arch("hyctas_m")  # ends with zconv cells at stride 32
    model = export(arch).eval()
    x = torch.randn(1, 3, *size)
    got = count_macs(model, x)
    assert model(x).shape == (1, 19, *size)
    want = arch_cost(arch, size).total.macs
    assert abs(got - want) <= 0.01 * want


def test_total_cost_equals_the_sum_of_arch_cost_rows():
    # total_cost is the validator's fast path for constraint 4; it must agree with the graph walk
    import numpy as np

    from hyctas_dsl.model.cost import arch_cost, total_cost
    from hyctas_dsl.search.genome import sample_population
    from hyctas_dsl.language.spaces import paper_space, zoo_files

    archs = [load(zoo_path(f)).archs[0] for f in zoo_files() if "space" not in f]
    archs += [random_arch(seed) for seed in range(30)]
    rng = np.random.default_rng(0)
    archs += [a for nb in (1, 2, 3) for a in sample_population(paper_space(), rng, 15, n_branches=nb)]
    assert len(archs) >= 45
    archs += [a.model_copy(update={"task": "panoptic"}) for a in archs[:10]]  # the panoptic head too
    for a in archs:
        for size, classes in (((1024, 2048), 19), ((64, 96), 11)):
            assert total_cost(a, size, classes) == arch_cost(a, size, classes).total, a.name
