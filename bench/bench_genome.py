"""Cost of the search genome for the paper's 2400 candidates (section 4.2: population 40, 20
generations, 1, 2 and 3 branches searched separately), on the paper space.

The genome should stay under 1% of the search time (it runs for every candidate). The search time is dominated by
evaluating candidates on the supernet (BN recalibration on 1000 images, then validation mIoU),
which this torch-free benchmark does not run; it reports the absolute cost per candidate of
each genome operation and of the whole NSGA-II loop (pymoo selection and survival included)
with a free evaluation, so the ratio follows from any measured evaluation time.

    .venv/bin/python bench/bench_genome.py [--candidates 2400] [--layers 20] [--filters 8]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import time

import numpy as np

from hyctas_dsl.language.api import canonical_key
from hyctas_dsl.search.genome import crossover, dedup, mutate, sample_arch
from hyctas_dsl.search.nsga import NSGAConfig, constraint_values, run_search
from hyctas_dsl.language.spaces import paper_space
from hyctas_dsl.language.validate import check_arch


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=2400)
    ap.add_argument("--layers", type=int, default=20, help="depth of the searched archs (the paper space's maximum)")
    ap.add_argument("--filters", type=int, default=8, help="filter multiplier (the supernet's: 8F = 64 channels)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    space = paper_space()
    n = args.candidates
    per_branch = n // 3
    rng = np.random.default_rng(args.seed)
    rows = []

    def row(name, calls, seconds, per_candidate_calls):
        rows.append((name, calls, seconds, seconds / calls * 1e3, seconds / calls * 1e3 * per_candidate_calls))

    # sampling: a third of the candidates for each branch count
    t = time.perf_counter()
    archs = [sample_arch(space, rng, k, args.layers, args.filters) for k in (1, 2, 3) for _ in range(per_branch)]
    row("sample_arch", len(archs), time.perf_counter() - t, 1)

    groups = [archs[i * per_branch : (i + 1) * per_branch] for i in range(3)]
    t = time.perf_counter()
    children = []
    for g in groups:
        for i in range(0, len(g) - 1, 2):
            children.extend(crossover(g[i], g[i + 1], space, rng))
    # one crossover makes two candidates
    row("crossover (2 children)", len(children) // 2, time.perf_counter() - t, 0.5)

    t = time.perf_counter()
    mutants = [mutate(c, space, rng, 0.02) for c in children]
    row("mutate p=0.02", len(mutants), time.perf_counter() - t, 1)

    t = time.perf_counter()
    for a in archs + mutants:
        canonical_key(a)
    row("canonical_key, uncached", len(archs) + len(mutants), time.perf_counter() - t, 1)

    t = time.perf_counter()
    unique = dedup(archs + mutants)  # keys remembered per object (genome.key_of), as in the search
    row("dedup", len(archs) + len(mutants), time.perf_counter() - t, 1)

    t = time.perf_counter()
    for a in mutants:
        constraint_values(a, space)
    row("constraint_values (G)", len(mutants), time.perf_counter() - t, 1)

    t = time.perf_counter()
    for a in mutants:
        check_arch(a, space)
    row("check_arch, uncached (reference only)", len(mutants), time.perf_counter() - t, 0)

    # The whole loop with a free evaluation: 3 searches x pop 40 x 20 generations.
    def evaluate(batch):
        return [{"miou": int(hashlib.sha1(canonical_key(a).encode()).hexdigest()[:8], 16) / 16**8} for a in batch]

    def cost(batch):
        return [float(sum(c.width for b in a.branches for c in b.cells)) for a in batch]

    pop, gens = 40, max(1, round(n / (3 * 40)))
    t = time.perf_counter()
    evaluated = 0
    for k in (1, 2, 3):
        cfg = NSGAConfig(n_branches=k, pop_size=pop, n_gen=gens, layers=args.layers, filters=args.filters, seed=args.seed, cost_filter=False)
        evaluated += run_search(space, evaluate, cost, cfg).evaluations
    row(f"run_search, free evaluation ({evaluated} cand.)", evaluated, time.perf_counter() - t, 1)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# genome cost on the paper space, {args.layers} layers, F={args.filters}; {platform.machine()}, "
          f"{os.cpu_count()} cores, load {load:.1f}, python {platform.python_version()}; "
          f"{len(unique)} distinct of {len(archs) + len(mutants)} keys")
    print(f"{'operation':<44} {'calls':>6} {'total s':>8} {'ms/call':>8} {'ms/cand.':>9}")
    for name, calls, sec, ms, per in rows:
        print(f"{name:<44} {calls:>6} {sec:>8.2f} {ms:>8.2f} {per:>9.2f}")
    loop = rows[-1][3]
    print(f"\nwhole loop: {loop:.1f} ms per candidate, {loop * n / 1e3:.0f} s for {n} candidates; "
          f"under 1% of the search when evaluating a candidate takes over {loop * 100 / 1e3:.1f} s")


if __name__ == "__main__":
    main()
