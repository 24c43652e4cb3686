"""NSGA-II over the AST genome with pymoo: the multi-objective search of section 3.4 and
Algorithm 1. Torch-free: the expensive part, scoring a candidate on the supernet, is a
callback the caller supplies, so this module knows nothing of torch, data or devices.

Objectives (eq. 3), both minimised by pymoo: ``-mIoU`` and a cost (latency, FLOPs or params;
whatever the caller's ``cost`` callback returns). The four constraints of section 3.4 are
pymoo inequality constraints ``G <= 0`` (:func:`constraint_values`); the genome never emits an
architecture that violates them, so they are a second line of defence, not a filter.

The loop (:func:`run_search`) drives pymoo's NSGA2 through ask/tell, so that Algorithm 1's two
filters, batching and exact resume stay in our hands while selection (binary tournament),
survival (rank and crowding distance) and duplicate elimination are pymoo's:

* generation 0: ``pop_size`` uniform samples (distinct canonical keys), all evaluated;
* generation g >= 1: offspring (tournament, crossover with probability ``crossover_prob``,
  per-gene mutation ``mutation_prob``, duplicates of the population removed) are generated
  until ``pop_size`` of them pass both filters (Algorithm 1's ``while size(Q) < n``), at most
  ``max_rounds`` rounds:
  1. an offspring whose cost exceeds the cost of the slowest member of the current Pareto
     front (rank 0 of P) is dropped *before* the expensive evaluation: it is recorded in the
     history with status ``over_cost`` and never given to pymoo (dropping, not "infeasible",
     keeps pymoo's view to evaluated individuals);
  2. the others are evaluated in one ``evaluate`` call per round; those with mIoU <=
     ``miou_min`` are recorded (``below_miou_min``) but not added to Q;
  then ``tell(Q)`` runs pymoo's survival on P u Q. Generation numbers start at 0, so
  ``n_gen`` generations evaluate about ``pop_size * n_gen`` candidates (the paper: 40 x 20 per
  branch count, 2400 for three).
* An architecture seen before is never evaluated twice: its result is reused (``cached``).
* Crowding distance is pymoo's unweighted one (Algorithm 1 mentions objective weights w; the
  paper gives no values).

Reproducible: all randomness flows from pymoo's ``random_state`` (seeded), which our
operators receive. After every generation the whole state (population with rank and crowding,
the generator's state, the history with each architecture as canonical text) is written
atomically as JSON; ``resume=True`` continues from it and gives the same history and front as
an uninterrupted run, provided ``evaluate`` and ``cost`` are deterministic.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.crossover import Crossover
from pymoo.core.duplicate import DuplicateElimination
from pymoo.core.mutation import Mutation
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.core.sampling import Sampling
from pymoo.core.termination import NoTermination
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from hyctas_dsl.language.api import dumps
from hyctas_dsl.fileio import write_text_atomic
from hyctas_dsl.language.ast import Arch, Space
from hyctas_dsl.language.errors import Diagnostic, HyctasError
from hyctas_dsl.search.genome import DEFAULT_FUSION_P, crossover, key_of, mutate, sample_population, training_memory_cached, without_memory
from hyctas_dsl.language.op_table import OPS
from hyctas_dsl.language.parser import parse
from hyctas_dsl.language.validate import check_arch

__all__ = [
    "Evaluate",
    "CostFn",
    "NSGAConfig",
    "Record",
    "SearchResult",
    "ArchProblem",
    "ArchSampling",
    "ArchMutation",
    "ArchCrossover",
    "ArchDuplicateElimination",
    "constraint_values",
    "analytic_cost",
    "pareto_front",
    "run_search",
    "load_state",
    "STATE_FORMAT",
]

Evaluate = Callable[[list[Arch]], list[dict]]
CostFn = Callable[[list[Arch]], Sequence[float]]

STATE_FORMAT = "hyctas-search-state"
STATE_VERSION = 1

# Record statuses.
ACCEPTED = "accepted"  # evaluated and offered to pymoo (initial population or Q)
BELOW_MIOU_MIN = "below_miou_min"  # evaluated, Algorithm 1's second filter
OVER_COST = "over_cost"  # not evaluated, Algorithm 1's first filter


# ---------------------------------------------------------------- records and config


@dataclass(frozen=True)
class NSGAConfig:
    """Settings of one search (one branch count). Defaults: the paper's section 4.2."""

    n_branches: int
    pop_size: int = 40
    n_gen: int = 20
    crossover_prob: float = 0.9
    mutation_prob: float = 0.02
    miou_min: float = 0.0
    seed: int = 0
    layers: int | None = None  # None: depth is sampled (and crossed over); see genome
    filters: int | None = None  # None: filter multiplier is sampled
    fusion_p: float = DEFAULT_FUSION_P
    vary_layers: bool = False  # mutation may change the depth
    vary_filters: bool = False  # mutation may change the filter multiplier
    cost_filter: bool = True  # Algorithm 1's first filter
    max_rounds: int = 10  # offspring rounds per generation before giving up on filling Q
    objective: str = "cost"  # a label for the cost objective (latency, flops, params)

    def check(self) -> None:
        bad = []
        if self.pop_size < 2:
            bad.append(f"pop_size must be at least 2, not {self.pop_size}")
        if self.n_gen < 1:
            bad.append(f"n_gen must be at least 1, not {self.n_gen}")
        for k in ("crossover_prob", "mutation_prob", "fusion_p"):
            v = getattr(self, k)
            if not 0.0 <= v <= 1.0:
                bad.append(f"{k} must lie in [0, 1], not {v}")
        if self.max_rounds < 1:
            bad.append(f"max_rounds must be at least 1, not {self.max_rounds}")
        if bad:
            raise ValueError("; ".join(bad))

    # n_gen may grow on resume (continue a finished search for more generations).
    def resumable_from(self, other: "NSGAConfig") -> list[str]:
        return [
            f"{f.name}: checkpoint {getattr(other, f.name)!r}, now {getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name != "n_gen" and getattr(self, f.name) != getattr(other, f.name)
        ]


@dataclass(frozen=True)
class Record:
    """One candidate considered by the search."""

    generation: int
    key: str  # hyctas_dsl.canonical_key
    arch: Arch
    cost: float
    miou: float | None  # None when not evaluated (over_cost)
    status: str  # accepted | below_miou_min | over_cost
    cached: bool = False  # evaluated in an earlier generation; the result was reused
    facts: dict = field(default_factory=dict)  # everything `evaluate` returned

    @property
    def objectives(self) -> tuple[float | None, float]:
        return (self.miou, self.cost)

    def to_json(self) -> dict:
        return {
            "generation": self.generation,
            "key": self.key,
            "arch": dumps(self.arch),
            "cost": self.cost,
            "miou": self.miou,
            "status": self.status,
            "cached": self.cached,
            "facts": self.facts,
        }

    @classmethod
    def from_json(cls, d: dict, arch: Arch | None = None) -> "Record":
        if arch is None:
            arch = parse(d["arch"]).archs[0]
        return cls(d["generation"], d["key"], arch, d["cost"], d["miou"], d["status"], d["cached"], d["facts"])


@dataclass
class SearchResult:
    config: NSGAConfig
    generation: int  # last completed generation (0 = initial population)
    population: list[Record]  # P after the last survival, in pymoo's order
    front: list[Record]  # pareto_front(population), by increasing cost
    history: list[Record]  # every candidate considered, in order
    evaluations: int  # candidates evaluated with the expensive callback


# ---------------------------------------------------------------- constraints and costs


def constraint_values(arch: Arch, space: Space) -> np.ndarray:
    """The four constraints of section 3.4 as pymoo inequality constraints (``<= 0`` holds):
    1. ``1 - #branches``; 2. number of branch pairs downsampling at the same set of layers;
    3. number of downsampling ``skip`` cells; 4. estimated training memory minus the space's
    limit, in GiB (``-1`` when the space sets no limit; ``0`` when the architecture breaks
    other rules, as the validator only estimates memory for a well-formed one)."""
    g1 = 1.0 - len(arch.branches)
    downs = [b.down_positions() for b in arch.branches]
    g2 = float(sum(1 for i in range(len(downs)) for j in range(i + 1, len(downs)) if downs[i] == downs[j]))
    g3 = float(sum(1 for b in arch.branches for c in b.cells if c.down and not (c.op.name in OPS and OPS[c.op.name].can_down)))
    if space.memory is None:
        g4 = -1.0
    elif check_arch(arch, without_memory(space)):
        g4 = 0.0
    else:
        g4 = (training_memory_cached(arch, space) - space.memory.bytes) / 2**30
    return np.array([g1, g2, g3, g4], dtype=float)


def analytic_cost(kind: str, input_size: tuple[int, int] = (1024, 2048), classes: int = 19) -> CostFn:
    """A cost callback from the analytic model (hyctas_dsl.model.cost): ``"flops"`` (multiply-
    accumulates, as the paper's Table 2-3 count FLOPs) or ``"params"``, at ``input_size``."""
    from hyctas_dsl.model.cost import arch_cost

    if kind not in ("flops", "params"):
        raise ValueError(f"analytic cost is `flops` or `params`, not `{kind}` (latency is measured)")

    def cost(archs: list[Arch]) -> list[float]:
        totals = [arch_cost(a, input_size, classes).total for a in archs]
        return [float(t.macs if kind == "flops" else t.params) for t in totals]

    return cost


def pareto_front(records: Iterable[Record]) -> list[Record]:
    """The non-dominated evaluated records (maximise mIoU, minimise cost), one per canonical
    key (the first), ordered by increasing cost. Records without an mIoU are ignored."""
    seen: set[str] = set()
    recs = []
    for r in records:
        if r.miou is not None and r.key not in seen:
            seen.add(r.key)
            recs.append(r)
    if not recs:
        return []
    F = np.array([[-r.miou, r.cost] for r in recs], dtype=float)
    front = NonDominatedSorting().do(F, only_non_dominated_front=True)
    return sorted((recs[i] for i in front), key=lambda r: (r.cost, -r.miou, r.key))


# ---------------------------------------------------------------- pymoo glue


def _objects(archs: Sequence[Arch]) -> np.ndarray:
    # Built element by element: np.array(list_of_archs) would try to iterate the models.
    X = np.empty((len(archs), 1), dtype=object)
    for i, a in enumerate(archs):
        X[i, 0] = a
    return X


class ArchProblem(Problem):
    """The search as a pymoo problem: one object variable (the Arch), two objectives
    (``-mIoU``, cost), four inequality constraints. ``evaluate`` is called once per batch,
    only for architectures it has not scored before; ``cost`` likewise."""

    def __init__(self, space: Space, evaluate: Evaluate, cost: CostFn):
        super().__init__(n_var=1, n_obj=2, n_ieq_constr=4, vtype=object)
        self.space = space
        self.evaluate_fn = evaluate
        self.cost_fn = cost
        self.costs_by_key: dict[str, float] = {}
        self.results_by_key: dict[str, dict] = {}
        self.evaluations = 0

    def costs(self, archs: Sequence[Arch], keys: Sequence[str] | None = None) -> list[float]:
        keys = list(keys) if keys is not None else [key_of(a) for a in archs]
        todo = {k: a for k, a in zip(keys, archs) if k not in self.costs_by_key}
        if todo:
            values = list(self.cost_fn(list(todo.values())))
            if len(values) != len(todo):
                raise ValueError(f"cost callback returned {len(values)} values for {len(todo)} architectures")
            for k, v in zip(todo, values):
                v = float(v)
                if not math.isfinite(v):
                    raise ValueError(f"cost callback returned {v} for {k}")
                self.costs_by_key[k] = v
        return [self.costs_by_key[k] for k in keys]

    def results(self, archs: Sequence[Arch], keys: Sequence[str] | None = None) -> list[dict]:
        keys = list(keys) if keys is not None else [key_of(a) for a in archs]
        todo = {k: a for k, a in zip(keys, archs) if k not in self.results_by_key}
        if todo:
            out = list(self.evaluate_fn(list(todo.values())))
            if len(out) != len(todo):
                raise ValueError(f"evaluate callback returned {len(out)} results for {len(todo)} architectures")
            for k, r in zip(todo, out):
                if not isinstance(r, dict) or not isinstance(r.get("miou"), (int, float)) or not math.isfinite(r["miou"]):
                    raise ValueError(f"evaluate callback must return dicts with a finite `miou`, got {r!r} for {k}")
                self.results_by_key[k] = dict(r)
            self.evaluations += len(todo)
        return [self.results_by_key[k] for k in keys]

    def _evaluate(self, X, out, *args, **kwargs):
        archs = [x[0] for x in X]
        keys = [key_of(a) for a in archs]
        costs = self.costs(archs, keys)
        res = self.results(archs, keys)
        out["F"] = np.array([[-float(r["miou"]), c] for r, c in zip(res, costs)], dtype=float)
        out["G"] = np.array([constraint_values(a, self.space) for a in archs], dtype=float)


class ArchSampling(Sampling):
    """Uniform sampling of distinct architectures (genome.sample_arch)."""

    def __init__(self, space: Space, n_branches: int, layers: int | None = None, filters: int | None = None, fusion_p: float = DEFAULT_FUSION_P):
        super().__init__()
        self.space, self.n_branches, self.layers, self.filters, self.fusion_p = space, n_branches, layers, filters, fusion_p

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        archs = sample_population(self.space, random_state, n_samples, self.n_branches, self.layers, self.filters, fusion_p=self.fusion_p)
        return _objects(archs)


class ArchMutation(Mutation):
    """Per-gene mutation (genome.mutate) of every offspring; ``p`` is the per-gene probability."""

    def __init__(self, space: Space, p: float = 0.02, vary_layers: bool = False, vary_filters: bool = False):
        super().__init__(prob=1.0)
        self.space, self.p, self.vary_layers, self.vary_filters = space, p, vary_layers, vary_filters

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        Y = np.empty_like(X)
        for i in range(len(X)):
            Y[i, 0] = mutate(X[i, 0], self.space, random_state, self.p, vary_layers=self.vary_layers, vary_filters=self.vary_filters)
        return Y


class ArchCrossover(Crossover):
    """Uniform crossover of two parents into two children (genome.crossover)."""

    def __init__(self, space: Space, prob: float = 0.9):
        super().__init__(n_parents=2, n_offsprings=2, prob=prob)
        self.space = space

    def _do(self, problem, X, *args, random_state=None, **kwargs):
        _, n_matings, _ = X.shape
        Y = np.empty_like(X)
        for k in range(n_matings):
            Y[0, k, 0], Y[1, k, 0] = crossover(X[0, k, 0], X[1, k, 0], self.space, random_state)
        return Y


class ArchDuplicateElimination(DuplicateElimination):
    """Duplicates by hyctas_dsl.canonical_key (names, branch order and meta ignored)."""

    def _do(self, pop, other, is_duplicate):
        seen = set() if other is None else {key_of(ind.X[0]) for ind in other}
        for i, ind in enumerate(pop):
            k = key_of(ind.X[0])
            if k in seen:
                is_duplicate[i] = True
            else:
                seen.add(k)
        return is_duplicate


# ---------------------------------------------------------------- the search loop


def _finite(x: float) -> Any:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _unfinite(x: Any) -> float:
    return float(x)  # also reads "inf" / "-inf"


def load_state(path: str | Path) -> dict:
    """Read a search checkpoint (JSON); HyctasError when it is not one."""
    path = Path(path)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HyctasError([Diagnostic("HY601", f"cannot read search checkpoint: {e}", None, None, str(path))]) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise HyctasError([Diagnostic("HY601", "not a hyctas search checkpoint (or another version)", None, None, str(path))])
    return state


class _Search:
    """The state of one run_search call (kept out of run_search so that it stays readable)."""

    def __init__(self, space: Space, evaluate: Evaluate, cost: CostFn, config: NSGAConfig):
        self.space, self.config = space, config
        self.problem = ArchProblem(space, evaluate, cost)
        self.algorithm = NSGA2(
            pop_size=config.pop_size,
            n_offsprings=config.pop_size,
            sampling=ArchSampling(space, config.n_branches, config.layers, config.filters, config.fusion_p),
            crossover=ArchCrossover(space, config.crossover_prob),
            mutation=ArchMutation(space, config.mutation_prob, config.vary_layers, config.vary_filters),
            eliminate_duplicates=ArchDuplicateElimination(),
        )
        self.algorithm.setup(self.problem, seed=config.seed, termination=NoTermination(), verbose=False)
        self.history: list[Record] = []
        self.accepted: dict[str, Record] = {}  # key -> first accepted record
        self.generation = -1

    # ---- one generation
    def _record(self, gen: int, arch: Arch, key: str, status: str, cached: bool) -> Record:
        cost = self.problem.costs_by_key[key]
        facts = self.problem.results_by_key.get(key)
        miou = float(facts["miou"]) if facts is not None and status != OVER_COST else None
        rec = Record(gen, key, arch, cost, miou, status, cached, dict(facts) if facts and status != OVER_COST else {})
        self.history.append(rec)
        if status == ACCEPTED:
            self.accepted.setdefault(key, rec)
        return rec

    def initial(self) -> None:
        pop = self.algorithm.ask()
        archs = [ind.X[0] for ind in pop]
        keys = [key_of(a) for a in archs]
        self.problem.costs(archs, keys)
        self.algorithm.evaluator.eval(self.problem, pop)
        for a, k in zip(archs, keys):
            self._record(0, a, k, ACCEPTED, False)
        self.algorithm.tell(infills=pop)
        self.generation = 0

    def step(self) -> None:
        gen = self.generation + 1
        cfg, alg, problem = self.config, self.algorithm, self.problem
        F = alg.pop.get("F")
        front = NonDominatedSorting().do(F, only_non_dominated_front=True)
        cost_max = float(F[front, 1].max())
        Q = Population.empty()
        tried: set[str] = set()
        for _ in range(cfg.max_rounds):
            need = cfg.pop_size - len(Q)
            if need <= 0:
                break
            alg.n_offsprings = need
            off = alg.ask()
            if off is None or len(off) == 0:
                break
            keep, archs, keys = [], [], []
            for i, ind in enumerate(off):
                k = key_of(ind.X[0])
                if k not in tried:
                    tried.add(k)
                    keep.append(i)
                    archs.append(ind.X[0])
                    keys.append(k)
            off = off[keep]
            costs = problem.costs(archs, keys)
            passing = []
            for i, (a, k, c) in enumerate(zip(archs, keys, costs)):
                if cfg.cost_filter and c > cost_max:
                    self._record(gen, a, k, OVER_COST, False)
                else:
                    passing.append(i)
            if not passing:
                continue
            cached = [keys[i] in problem.results_by_key for i in passing]
            off = off[passing]
            alg.evaluator.eval(problem, off)
            ok = []
            for j, i in enumerate(passing):
                miou = problem.results_by_key[keys[i]]["miou"]
                status = ACCEPTED if miou > cfg.miou_min else BELOW_MIOU_MIN
                self._record(gen, archs[i], keys[i], status, cached[j])
                if status == ACCEPTED:
                    ok.append(j)
            Q = Population.merge(Q, off[ok]) if len(Q) else off[ok]
        alg.n_offsprings = cfg.pop_size
        alg.tell(infills=Q)
        self.generation = gen

    # ---- state
    def to_json(self) -> dict:
        pop = self.algorithm.pop
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "config": asdict(self.config),
            "space": dumps(self.space),
            "generation": self.generation,
            "evaluations": self.problem.evaluations,
            "rng": self.algorithm.random_state.bit_generator.state,
            "population": [
                {
                    "key": key_of(ind.X[0]),
                    "F": [float(v) for v in ind.F],
                    "G": [float(v) for v in ind.G],
                    "rank": int(ind.get("rank")),
                    "crowding": _finite(float(ind.get("crowding"))),
                }
                for ind in pop
            ],
            "history": [r.to_json() for r in self.history],
        }

    def restore(self, state: dict) -> None:
        archs: dict[str, Arch] = {}
        for d in state["history"]:
            arch = archs.get(d["key"])
            rec = Record.from_json(d, arch)
            archs[rec.key] = rec.arch
            self.history.append(rec)
            self.problem.costs_by_key[rec.key] = rec.cost
            if rec.miou is not None:
                self.problem.results_by_key[rec.key] = dict(rec.facts)
            if rec.status == ACCEPTED:
                self.accepted.setdefault(rec.key, rec)
        self.problem.evaluations = state["evaluations"]
        P = state["population"]
        pop = Population.new("X", _objects([archs[p["key"]] for p in P]))
        pop.set("F", np.array([p["F"] for p in P], dtype=float))
        pop.set("G", np.array([p["G"] for p in P], dtype=float))
        for ind, p in zip(pop, P):
            ind.set("rank", p["rank"])
            ind.set("crowding", _unfinite(p["crowding"]))
            ind.evaluated.update({"F", "G", "H"})
        alg = self.algorithm
        alg.random_state.bit_generator.state = state["rng"]
        alg._initialize()
        alg.pop = pop
        alg.is_initialized = True
        alg.n_iter = state["generation"] + 1
        self.generation = state["generation"]

    def result(self) -> SearchResult:
        population = [self.accepted[key_of(ind.X[0])] for ind in self.algorithm.pop]
        return SearchResult(self.config, self.generation, population, pareto_front(population), list(self.history), self.problem.evaluations)


def run_search(
    space: Space,
    evaluate: Evaluate,
    cost: CostFn,
    config: NSGAConfig,
    *,
    state_path: str | Path | None = None,
    resume: bool = False,
    save_state: bool = True,
    on_generation: Callable[[SearchResult], None] | None = None,
) -> SearchResult:
    """NSGA-II search of ``space`` with ``config.n_branches`` branches (module doc).

    ``evaluate(archs) -> [{"miou": float, ...}, ...]`` scores a batch (one call per offspring
    round, so the caller may split it across ranks); every key it returns is kept in the
    history (values must be JSON-serialisable). ``cost(archs) -> [float, ...]`` gives the cost
    objective (predicted or measured latency, FLOPs, params); it is asked before ``evaluate``,
    for Algorithm 1's first filter. With ``state_path``, the state is written after every
    generation (only when ``save_state``: under torchrun let rank 0 write); ``resume=True``
    continues from it (HyctasError when it is missing, unreadable or from other settings).
    ``on_generation`` receives the result so far after every generation.
    """
    config.check()
    search = _Search(space, evaluate, cost, config)
    if resume:
        if state_path is None:
            raise ValueError("resume=True needs a state_path")
        state = load_state(state_path)
        saved = NSGAConfig(**state["config"])
        diffs = config.resumable_from(saved)
        if state["space"] != dumps(space):
            diffs.append("the search space differs")
        if diffs:
            raise HyctasError(
                [Diagnostic("HY602", "checkpoint was made with other settings: " + "; ".join(diffs), None, "resume with the same settings, or start afresh", str(state_path))]
            )
        search.restore(state)
    while search.generation < config.n_gen - 1:
        if search.generation < 0:
            search.initial()
        else:
            search.step()
        if state_path is not None and save_state:
            write_text_atomic(state_path, json.dumps(search.to_json()))
        if on_generation is not None:
            on_generation(search.result())
    return search.result()
