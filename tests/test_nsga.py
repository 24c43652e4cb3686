"""NSGA-II glue: a full search with a cheap synthetic evaluation, Algorithm 1's filters, the
four constraints, exact resume from a checkpoint, and pymoo's own loop with our operators."""

import hashlib
import json
import math

import numpy as np
import pytest

import hyctas_dsl as hy
from hyctas_dsl.model.cost import arch_cost
from hyctas_dsl.language.errors import HyctasError
from hyctas_dsl.search.genome import sample_arch
from hyctas_dsl.search.nsga import (
    ArchCrossover,
    ArchDuplicateElimination,
    ArchMutation,
    ArchProblem,
    ArchSampling,
    Record,
    NSGAConfig,
    analytic_cost,
    constraint_values,
    pareto_front,
    run_search,
)
from hyctas_dsl.language.validate import check_arch
from tests.test_genome import SMALL, SMALL_TEXT

INPUT = (64, 64)


def synthetic_miou(arch):
    """Deterministic, cost-correlated but noisy: more MACs help with diminishing returns,
    attention helps a little, and a hash of the key adds arch-specific noise."""
    macs = arch_cost(arch, INPUT).total.macs
    attn = sum(c.op.name == "attn" for b in arch.branches for c in b.cells)
    h = int(hashlib.sha1(hy.canonical_key(arch).encode()).hexdigest()[:6], 16) / 16**6
    return 0.1 * math.log10(macs) + 0.01 * attn + 0.05 * h


class Evaluator:
    """The expensive callback: remembers every batch it was given."""

    def __init__(self, fail_at_call=None):
        self.batches = []
        self.fail_at_call = fail_at_call

    def __call__(self, archs):
        if self.fail_at_call is not None and len(self.batches) == self.fail_at_call:
            raise RuntimeError("node died")
        self.batches.append([hy.canonical_key(a) for a in archs])
        return [{"miou": synthetic_miou(a), "note": "synthetic"} for a in archs]


COST = analytic_cost("flops", INPUT)


def config(**kw):
    base = dict(n_branches=2, pop_size=10, n_gen=4, seed=1, objective="flops")
    base.update(kw)
    return NSGAConfig(**base)


def dominates(a, b):
    return a.miou >= b.miou and a.cost <= b.cost and (a.miou > b.miou or a.cost < b.cost)


def history_json(res):
    return [r.to_json() for r in res.history]


def test_search_runs_and_front_is_non_dominated():
    ev = Evaluator()
    res = run_search(SMALL, ev, COST, config())
    assert res.generation == 3
    assert len(res.population) == 10
    assert all(check_arch(r.arch, SMALL) == [] for r in res.history)
    assert all(len(r.arch.branches) == 2 for r in res.history)
    # the front: no member of the population dominates a front member, and every population
    # member off the front is dominated by one on it
    assert res.front
    for f in res.front:
        assert not any(dominates(p, f) for p in res.population)
    for p in res.population:
        if p not in res.front:
            assert any(dominates(f, p) for f in res.front)
    # every architecture handed to the callback is in the history exactly once, evaluated
    evaluated = [k for batch in ev.batches for k in batch]
    assert len(evaluated) == len(set(evaluated)) == res.evaluations
    assert sorted(evaluated) == sorted(r.key for r in res.history if r.miou is not None and not r.cached)
    # one batch per offspring round (a whole generation at once when the filters pass enough)
    assert len(ev.batches[0]) == 10 and all(len(b) >= 1 for b in ev.batches)
    # the history front over all evaluated candidates is non-dominated too
    hist_front = pareto_front(res.history)
    evaluated_recs = [r for r in res.history if r.miou is not None]
    for f in hist_front:
        assert not any(dominates(r, f) for r in evaluated_recs)


def test_search_improves_on_the_initial_population():
    res = run_search(SMALL, Evaluator(), COST, config(n_gen=6, pop_size=12))
    initial = pareto_front([r for r in res.history if r.generation == 0])
    final = res.front
    # the final front dominates or equals at least one initial front member, and no initial
    # front member dominates a final front member (elitism)
    assert any(any(dominates(f, i) for f in final) for i in initial)
    assert not any(dominates(i, f) for i in initial for f in final)


def test_filters_of_algorithm_1():
    fronts = {}

    def remember(res):
        fronts[res.generation] = max(r.cost for r in res.front)

    ev = Evaluator()
    miou_min = 0.72
    res = run_search(SMALL, ev, COST, config(n_gen=5, miou_min=miou_min), on_generation=remember)
    over = [r for r in res.history if r.status == "over_cost"]
    below = [r for r in res.history if r.status == "below_miou_min"]
    assert over and below, "the synthetic setting should trigger both filters"
    evaluated = {k for batch in ev.batches for k in batch}
    for r in over:
        # slower than the slowest member of the previous generation's front, never evaluated
        assert r.cost > fronts[r.generation - 1]
        assert r.miou is None and r.facts == {}
        assert r.key not in evaluated or any(
            q.key == r.key and q.miou is not None and q.generation != r.generation for q in res.history
        )
    for r in below:
        assert r.miou <= miou_min and r.generation >= 1
    offspring = [r for r in res.history if r.status == "accepted" and r.generation >= 1]
    assert offspring and all(r.miou > miou_min for r in offspring)
    # only accepted candidates reach the population
    assert all(p.status == "accepted" for p in res.population)


def test_cost_filter_can_be_switched_off():
    res = run_search(SMALL, Evaluator(), COST, config(cost_filter=False))
    assert not any(r.status == "over_cost" for r in res.history)


def test_seeded_and_reproducible():
    a = run_search(SMALL, Evaluator(), COST, config())
    b = run_search(SMALL, Evaluator(), COST, config())
    c = run_search(SMALL, Evaluator(), COST, config(seed=2))
    assert history_json(a) == history_json(b)
    assert history_json(a) != history_json(c)


def test_resume_from_a_checkpoint_is_exact(tmp_path):
    full = run_search(SMALL, Evaluator(), COST, config(n_gen=5), state_path=tmp_path / "full.json")

    # stop after 3 generations, then continue to 5
    part = tmp_path / "part.json"
    run_search(SMALL, Evaluator(), COST, config(n_gen=3), state_path=part)
    resumed = run_search(SMALL, Evaluator(), COST, config(n_gen=5), state_path=part, resume=True)
    assert history_json(resumed) == history_json(full)
    assert [r.key for r in resumed.population] == [r.key for r in full.population]
    assert [r.key for r in resumed.front] == [r.key for r in full.front]
    assert json.loads(part.read_text()) == json.loads((tmp_path / "full.json").read_text())

    # a crash in the middle of a generation: the last checkpoint resumes exactly
    crash = tmp_path / "crash.json"
    with pytest.raises(RuntimeError, match="node died"):
        run_search(SMALL, Evaluator(fail_at_call=3), COST, config(n_gen=5), state_path=crash)
    assert 1 <= json.loads(crash.read_text())["generation"] < 4
    again = run_search(SMALL, Evaluator(), COST, config(n_gen=5), state_path=crash, resume=True)
    assert history_json(again) == history_json(full)


def test_checkpoint_holds_canonical_text(tmp_path):
    path = tmp_path / "s.json"
    res = run_search(SMALL, Evaluator(), COST, config(n_gen=2), state_path=path)
    state = json.loads(path.read_text())
    assert state["generation"] == 1 and len(state["population"]) == 10
    for d, r in zip(state["history"], res.history):
        arch = hy.parse(d["arch"]).archs[0]
        assert arch == r.arch and d["arch"] == hy.dumps(r.arch)
        assert Record.from_json(d) == r


def test_resume_errors_are_clear(tmp_path):
    path = tmp_path / "s.json"
    run_search(SMALL, Evaluator(), COST, config(n_gen=2), state_path=path)
    with pytest.raises(HyctasError) as e:
        run_search(SMALL, Evaluator(), COST, config(n_gen=3, seed=5), state_path=path, resume=True)
    assert e.value.codes == ["HY602"] and "seed" in str(e.value)
    with pytest.raises(HyctasError) as e:
        run_search(SMALL, Evaluator(), COST, config(), state_path=tmp_path / "missing.json", resume=True)
    assert e.value.codes == ["HY601"]
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(HyctasError) as e:
        run_search(SMALL, Evaluator(), COST, config(), state_path=tmp_path / "junk.json", resume=True)
    assert e.value.codes == ["HY601"]


def test_bad_callbacks_are_reported():
    with pytest.raises(ValueError, match="finite `miou`"):
        run_search(SMALL, lambda archs: [{"acc": 1.0} for _ in archs], COST, config(n_gen=1))
    with pytest.raises(ValueError, match="returned 1 results"):
        run_search(SMALL, lambda archs: [{"miou": 0.5}], COST, config(n_gen=1))


def test_constraint_values():
    r = np.random.default_rng(0)
    arch = sample_arch(SMALL, r, n_branches=3)
    g = constraint_values(arch, SMALL)
    assert g.shape == (4,) and (g <= 0).all()
    # constraint 2: a copy of a branch downsamples at the same layers (it also ends at the
    # same stride, so memory is not estimated: 0)
    b = arch.branches[1]
    twin = arch.model_copy(update={"branches": arch.branches + (b.model_copy(update={"name": "twin"}),)})
    assert list(constraint_values(twin, SMALL)) == [-3.0, 1.0, 0.0, 0.0]
    # constraint 3: a skip that downsamples
    cells = list(b.cells)
    j = next(i for i, c in enumerate(cells) if c.down)
    cells[j] = cells[j].model_copy(update={"op": hy.OpCall(name="skip")})
    skip = arch.model_copy(update={"branches": (arch.branches[0], b.model_copy(update={"cells": tuple(cells)}), arch.branches[2])})
    assert constraint_values(skip, SMALL)[2] == 1.0
    # constraint 1: no branch
    assert constraint_values(arch.model_copy(update={"branches": (), "fusions": ()}), SMALL)[0] == 1.0
    # constraint 4: GiB over the limit
    tight = hy.parse(SMALL_TEXT.replace("5 MiB", "1 KiB")).spaces[0]
    from hyctas_dsl.model.cost import training_memory

    mem = training_memory(arch, 2, (64, 64))
    assert constraint_values(arch, tight)[3] == pytest.approx((mem - 1024) / 2**30)


def test_pymoo_minimize_with_our_operators():
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.optimize import minimize

    ev = Evaluator()
    problem = ArchProblem(SMALL, ev, COST)
    algorithm = NSGA2(
        pop_size=8,
        sampling=ArchSampling(SMALL, n_branches=3),
        crossover=ArchCrossover(SMALL, 0.9),
        mutation=ArchMutation(SMALL, 0.05),
        eliminate_duplicates=ArchDuplicateElimination(),
    )
    res = minimize(problem, algorithm, ("n_gen", 3), seed=4, verbose=False)
    archs = [x[0] for x in res.X]
    assert archs and all(check_arch(a, SMALL) == [] and len(a.branches) == 3 for a in archs)
    assert len({hy.canonical_key(a) for a in archs}) == len(archs)
    assert (res.G <= 0).all()
    assert np.allclose(res.F[:, 0], [-synthetic_miou(a) for a in archs])


def test_pareto_front_helper():
    a = sample_arch(SMALL, np.random.default_rng(1), n_branches=1)
    recs = [
        Record(0, "a", a, cost=1.0, miou=0.5, status="accepted"),
        Record(0, "b", a, cost=2.0, miou=0.6, status="accepted"),
        Record(0, "c", a, cost=2.0, miou=0.55, status="accepted"),  # dominated by b
        Record(0, "d", a, cost=3.0, miou=None, status="over_cost"),  # not evaluated
        Record(1, "a", a, cost=1.0, miou=0.5, status="accepted", cached=True),  # repeat
    ]
    assert [r.key for r in pareto_front(recs)] == ["a", "b"]
    assert pareto_front([]) == []


def test_generation_with_no_accepted_offspring_keeps_the_population():
    res = run_search(SMALL, Evaluator(), COST, config(n_gen=2, miou_min=10.0, max_rounds=2))
    initial = {r.key for r in res.history if r.generation == 0}
    assert {r.key for r in res.population} == initial
    assert not any(r.status == "accepted" for r in res.history if r.generation == 1)
