"""Kernel records (hyctas_dsl.jobs.latency_lut): every top-level module of a compiled network
is found with its shapes, timed once and reused; prediction is the record sum plus a fitted
correction; records are saved with their device and protocol and refused elsewhere. And the
measurement's stable stop (hyctas_dsl.jobs.latency)."""

import json

import pytest
import torch

from hyctas_dsl.jobs.latency import STABLE_MIN_RUNS, measure_latency, stable
from hyctas_dsl.jobs.latency_lut import CORRECTION_FEATURES, LatencyLUT, RecordsLatencyModel, module_calls
from hyctas_dsl.jobs.latency_model import LatencyModel, LatencyModelError, device_fingerprint

PROTOCOL = {"input": "1x3x32x32", "dtype": "fp32", "threads": 1, "layout": "contiguous", "statistic": "fastest run"}


@pytest.fixture(scope="module")
def arch():
    # three branches with fusion nodes between them (the zoo's archs have none)
    import numpy as np

    from hyctas_dsl.language.spaces import paper_space
    from hyctas_dsl.search.genome import sample_population

    return sample_population(paper_space(), np.random.default_rng(0), 1, n_branches=3)[0]


def test_module_calls_see_every_top_level_module_and_the_glue(arch):
    calls, (glue_calls, glue_mb) = module_calls(arch, (32, 32), 19)
    from hyctas_dsl.compiler import export

    names = [n for n, _ in export(arch, classes=19).named_children()]
    assert sorted(c.name for c in calls) == sorted(names)
    assert calls[0].name == "stem" and calls[-1].name == "head"
    # a module's key holds its input shapes: at another input size the stem is another record
    # (a cell may meet the same shapes at another stride, and rightly shares its record)
    bigger = module_calls(arch, (64, 64), 19)[0]
    assert [c.name for c in bigger] == [c.name for c in calls] and bigger[0].key != calls[0].key
    assert "[[1,3,32,32]]" in calls[0].key
    # the glue: the sums feeding fusion outputs into cells, the padding and the crop
    fusions = sum(n.startswith("fuse_") for n in names)
    assert glue_calls >= fusions > 0 and glue_mb > 0


def test_records_are_timed_once_and_reused(arch):
    lut = LatencyLUT(PROTOCOL, min_runs=2, min_s=0.0, warmup=1)
    calls, _ = lut.calls(arch, 19)
    total = lut.record_sum(arch, 19, calls)
    distinct = {c.key for c in calls}
    assert lut.misses == len(distinct) and set(lut.table) == distinct
    assert total == pytest.approx(sum(lut.table[c.key] for c in calls)) and total > 0
    misses = lut.misses
    assert lut.record_sum(arch, 19) == total  # all recorded: nothing timed again
    assert lut.misses == misses and lut.hits >= len(calls)


def _toy():
    """A table filled by hand (no timing) and networks whose latency is a known law of
    [record sum, modules, glue calls, glue MB]."""
    lut = LatencyLUT(PROTOCOL)
    feats, ys = [], []
    for i in range(10):
        f = [1.0 + 0.7 * i, 5.0 + (3 * i) % 7, float(i % 4), 0.1 * ((5 * i) % 3)]
        feats.append(f)
        ys.append(0.3 + 1.1 * f[0] + 0.02 * f[1] + 0.05 * f[2] + 0.4 * f[3])
    return lut, feats, ys


def test_prediction_is_the_record_sum_plus_a_fitted_correction(arch):
    lut, feats, ys = _toy()
    m = RecordsLatencyModel.fit(feats, ys, device_fingerprint(), PROTOCOL, records=lut)
    assert m.intercept == pytest.approx(0.3, abs=1e-6)
    assert m.coef == pytest.approx([1.1, 0.02, 0.05, 0.4], abs=1e-6)
    assert m.error_max < 1e-6 and len(CORRECTION_FEATURES) == len(m.coef)
    # an arch whose modules are all recorded is predicted from its records, timing nothing
    calls, glue = module_calls(arch, (32, 32), 19)
    for j, c in enumerate(calls):
        lut.table[c.key] = 0.01 * (j + 1)
    want = 0.3 + 1.1 * sum(lut.table[c.key] for c in calls) + 0.02 * len(calls) + 0.05 * glue[0] + 0.4 * glue[1]
    assert m.predict_arch(arch, 19) == pytest.approx(want)
    assert lut.misses == 0


def test_save_load_and_refuse_another_device_or_protocol(tmp_path):
    lut, feats, ys = _toy()
    lut.table = {"Conv [[1,8,16,16]]->[[1,8,16,16]] c 0123": 0.25}
    here = device_fingerprint("cpu")
    m = RecordsLatencyModel.fit(feats, ys, here, PROTOCOL, records=lut)
    path = tmp_path / "lat.json"
    m.save(path)
    data = json.loads(path.read_text())
    assert data["device"] == here and data["protocol"] == PROTOCOL and data["records"] == lut.table
    assert not list(tmp_path.glob("*.tmp*"))
    back = RecordsLatencyModel.load(path, here, PROTOCOL)
    assert back.records.table == lut.table and back.predict(feats[2]) == pytest.approx(m.predict(feats[2]))
    with pytest.raises(LatencyModelError, match=r"calibrated for another device: name '.+' \(here 'Other CPU'\)"):
        RecordsLatencyModel.load(path, dict(here, name="Other CPU"), PROTOCOL)
    with pytest.raises(LatencyModelError, match=r"another protocol: input '1x3x32x32' \(here '1x3x512x1024'\)"):
        RecordsLatencyModel.load(path, here, dict(PROTOCOL, input="1x3x512x1024"))
    # a features model is not a records model, and the other way round
    LatencyModel.fit([[float(i)] * 30 for i in range(1, 6)], [1.0, 2, 3, 4, 5], here, PROTOCOL).save(tmp_path / "f.json")
    with pytest.raises(LatencyModelError, match="a per-op features latency model, not a latency-records model"):
        RecordsLatencyModel.load(tmp_path / "f.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(LatencyModelError, match="not a latency-records model"):
        RecordsLatencyModel.load(tmp_path / "other.json")
    with pytest.raises(LatencyModelError, match="not a latency model"):
        LatencyModel.load(path)
    data["records"] = {"k": "slow"}
    (tmp_path / "damaged.json").write_text(json.dumps(data))
    with pytest.raises(LatencyModelError, match="damaged latency-records model"):
        RecordsLatencyModel.load(tmp_path / "damaged.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LatencyModelError, match="not a readable latency model"):
        RecordsLatencyModel.load(tmp_path / "bad.json")


def test_stable_stop():
    flat = [2.0, 1.5] + [1.0] * (STABLE_MIN_RUNS - 2)
    assert stable(flat)
    assert not stable(flat[:-1])  # too few runs
    still_improving = [2.0 - 0.05 * i for i in range(STABLE_MIN_RUNS)]
    assert not stable(still_improving)
    # within 1%: noise, not an improvement
    assert stable([1.0] * (STABLE_MIN_RUNS // 2) + [0.995] * (STABLE_MIN_RUNS // 2))
    lat = measure_latency(torch.nn.Conv2d(3, 4, 3), (16, 16), warmup_s=0.05, timed_s=2.0, threads=1,
                          stop_when_stable=True)
    # a 16x16 convolution settles within the 2 s: the timing stopped because it was stable
    assert lat.runs >= STABLE_MIN_RUNS and stable(list(lat.samples)) and sum(lat.samples) < 2000
    assert "until the fastest was stable (at most 2 s)" in lat.protocol
