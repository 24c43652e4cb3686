"""The search driver end to end on a tiny space: emitted files validate and compile, the
table and plot are written, resume continues exactly, torchrun splits candidates."""

import csv
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import hyctas_dsl as hy
from hyctas_dsl.compiler import export
from hyctas_dsl.jobs.config import ConfigError, SearchConfig, SupernetConfig
from hyctas_dsl.jobs.search import search
from hyctas_dsl.jobs.supernet_training import train_supernet
from tests.test_supernet_train import DATA, TINY_SPACE
from tests.conftest import free_port


@pytest.fixture(scope="module")
def supernet_dir(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("sn")
    space = d / "tiny.hy"
    space.write_text(TINY_SPACE)
    train_supernet(SupernetConfig(space=str(space), data=DATA, out=str(d / "run"), steps=4, batch=4, procs=1), progress=False)
    return d / "run"


def run(supernet_dir, out, **kw):
    base = dict(supernet=str(supernet_dir), data=DATA, out=str(out), objective="flops", branches=[1, 2],
                population=4, generations=2, bn_images=8, val_images=8, seed=1)
    base.update(kw)
    return search(SearchConfig(**base), progress=False)


def test_search_emits_valid_compilable_front(supernet_dir, tmp_path):
    res = run(supernet_dir, tmp_path / "out")
    assert res.files, "a search always has a non-empty front"
    space = hy.parse(TINY_SPACE).spaces[0]
    for f in res.files:
        module = hy.load(f)  # self-describing: validated against the space declared beside it
        assert module.spaces == (space,)
        arch = module.archs[0]
        meta = arch.meta_dict()
        assert 0.0 <= meta["miou"] <= 1.0 and meta["params"] > 0 and "generation" in meta
        assert hy.dumps(module) == f.read_text()  # emitted in canonical form, comment kept
        model = export(arch, classes=11).eval()
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 11, 32, 32)
    rows = list(csv.DictReader(open(tmp_path / "out" / "candidates.csv")))
    assert {r["branches"] for r in rows} == {"1", "2"}
    assert sum(r["on_front"] == "True" for r in rows) == len(res.files)
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["evaluated"] == res.evaluated and "torch" in summary["environment"]["packages"]


def test_resume_gives_the_same_front(supernet_dir, tmp_path):
    straight = run(supernet_dir, tmp_path / "a", generations=3, branches=[2])
    run(supernet_dir, tmp_path / "b", generations=2, branches=[2])
    resumed = search(SearchConfig(supernet=str(supernet_dir), data=DATA, out=str(tmp_path / "b"), objective="flops",
                                  branches=[2], population=4, generations=3, bn_images=8, val_images=8, seed=1),
                     resume=True, progress=False)
    assert [p.read_text() for p in straight.files] == [p.read_text() for p in resumed.files]


def test_search_under_torchrun_splits_candidates(supernet_dir, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "hyctas_dsl.cli", "search", "--supernet", str(supernet_dir), "--data", DATA, "--emit-dsl", str(out),
           "--objective", "flops", "--branches", "2", "--population", "4", "--generations", "2",
           "--bn-images", "8", "--val-images", "8", "--seed", "1", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    single = run(supernet_dir, tmp_path / "single", branches=[2])
    assert sorted(p.name for p in single.files) == sorted(p.name for p in out.glob("searched_*.hy"))
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2


def test_latency_objective_records_the_protocol(supernet_dir, tmp_path):
    res = run(supernet_dir, tmp_path / "lat", objective="latency", latency="measure", branches=[1], generations=1,
              latency_seconds=0.01, latency_input=(32, 32))
    assert res.files
    for f in res.files:
        meta = hy.load(f, check_rules=False).archs[0].meta_dict()
        assert meta["latency_ms"] > 0
        assert meta["latency_protocol"].startswith("batch 1, 1x3x32x32, cpu (1 thread), fp32")
    summary = json.loads((tmp_path / "lat" / "summary.json").read_text())
    assert summary["latency"] == "measure" and summary["latency_model"] is None
    assert summary["timings_s"]["latency_measurement"] > 0


def test_predicted_latency_ranks_and_only_measurements_are_written(supernet_dir, tmp_path):
    out = tmp_path / "pred"
    res = run(supernet_dir, out, objective="latency", latency="predict", branches=[1, 2], generations=1,
              latency_seconds=0.01, latency_input=(32, 32), latency_calibration=6)
    summary = json.loads((out / "summary.json").read_text())
    model = json.loads((out / "latency_model.json").read_text())
    assert model["protocol"]["input"] == "1x3x32x32" and len(model["calibration"]) == 6
    assert summary["latency"] == "predict" and summary["latency_model"]["protocol"] == model["protocol"]
    checked = {c["file"]: c for c in summary["latency_checked"] if c["file"]}
    rows = list(csv.DictReader(open(out / "candidates.csv")))
    assert res.files and len(checked) == len(res.files)
    for f in res.files:
        meta = hy.load(f, check_rules=False).archs[0].meta_dict()
        # the file's latency is the measurement of that file's arch, with its protocol, not the prediction
        assert meta["latency_ms"] == pytest.approx(checked[f.name]["measured_ms"], abs=1e-4)
        assert re.match(r"batch 1, 1x3x32x32, cpu \(1 thread\), fp32, eager, contiguous, .*median of \d+ runs .*CV",
                        meta["latency_protocol"])
        assert "latency_predicted_fastest_ms" not in meta
    for r in rows:  # a candidate that was only predicted has no measured latency in the table
        assert r["latency_predicted_fastest_ms"]
        assert bool(r["latency_ms"]) == bool(r["latency_protocol"])
    # an accepted candidate left unmeasured is dominated, beyond the model's error, by a measured one
    e = summary["latency_model"]["calibration_error_p90"]
    for r in rows:
        if r["status"] == "accepted" and not r["latency_ms"]:
            assert any(m["search"] == r["search"] and m["latency_ms"] and float(m["miou"]) >= float(r["miou"])
                       and float(m["latency_predicted_fastest_ms"]) * (1 + e)
                       < float(r["latency_predicted_fastest_ms"]) * (1 - e) for m in rows), r
    # a second search reuses the saved model; one calibrated with another protocol is refused
    res2 = run(supernet_dir, tmp_path / "again", objective="latency", latency="predict", branches=[1], generations=1,
               latency_seconds=0.01, latency_input=(32, 32), latency_model=str(out / "latency_model.json"))
    assert res2.files
    with pytest.raises(ConfigError, match=r"latency_model.json: calibrated for another protocol: input '1x3x32x32' "
                                          r"\(here '1x3x64x64'\)"):
        run(supernet_dir, tmp_path / "other", objective="latency", latency="predict", branches=[1], generations=1,
            latency_seconds=0.01, latency_input=(64, 64), latency_model=str(out / "latency_model.json"))



def test_emitted_files_need_no_space_flag(supernet_dir, tmp_path):
    """validate, compile, draw and key on an emitted file: no --space, the file says it."""
    res = run(supernet_dir, tmp_path / "out", branches=[1], generations=1)
    f = str(res.files[0])
    for args in (["validate", f], ["compile", f], ["key", f], ["draw", f, "-o", str(tmp_path / "a.dot")]):
        r = hyctas(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    assert (tmp_path / "a.dot").read_text().startswith("digraph")


def test_search_trains_its_supernet_from_the_config_table(tmp_path):
    """The [supernet] table of --config configures the supernet the demo search trains; with
    --supernet given as well it is an error, not silently ignored."""
    (tmp_path / "tiny.hy").write_text(TINY_SPACE)
    conf = tmp_path / "c.toml"
    conf.write_text(f'[supernet]\nspace = "{tmp_path / "tiny.hy"}"\nsteps = 2\nbatch = 2\nscheme = "sandwich"\nprocs = 1\n'
                    '[search]\nobjective = "flops"\nbranches = [1]\npopulation = 2\ngenerations = 1\n'
                    f'bn_images = 4\nval_images = 4\ndata = "{DATA}"\n')
    r = hyctas("search", "--config", str(conf), "--emit-dsl", str(tmp_path / "out"), "--quiet")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "out" / "supernet" / "config.json").read_text())["config"]
    assert (rec["steps"], rec["batch"], rec["scheme"], rec["procs"]) == (2, 2, "sandwich", 1)
    r = hyctas("search", "--config", str(conf), "--supernet", str(tmp_path / "out" / "supernet"),
               "--emit-dsl", str(tmp_path / "out2"), "--quiet")
    assert r.returncode == 2 and "[supernet]" in r.stderr


def hyctas(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "hyctas_dsl.cli", *args], capture_output=True, text=True, env=env, timeout=300)
