"""The latency model's mechanics: features traced from the compiled network agree with the
analytic cost model, the fit recovers a known linear law, and a saved model is refused on
another device or protocol with a one-line error."""

import json

import pytest

import hyctas_dsl as hy
from hyctas_dsl.model.cost import arch_cost
from hyctas_dsl.jobs.latency_model import (
    KINDS,
    LatencyModel,
    LatencyModelError,
    arch_features,
    device_fingerprint,
)
from hyctas_dsl.language.spaces import zoo_path

PROTOCOL = {"input": "1x3x64x64", "dtype": "fp32", "threads": 1, "layout": "contiguous"}


def _kind(features, kind):
    i = KINDS.index(kind)
    return dict(zip(("calls", "gmacs", "mb"), features[3 * i:3 * i + 3]))


@pytest.mark.parametrize("name", ["hyctas_s", "hyctas_m"])
def test_traced_features_count_every_conv_and_attention_as_the_cost_model(name):
    arch = hy.load(zoo_path(f"{name}.hy")).archs[0]
    f = arch_features(arch, (256, 512), 19)
    traced = sum(_kind(f, k)["gmacs"] for k in ("conv3x3", "conv1x1", "attention")) * 1e9
    assert traced == pytest.approx(arch_cost(arch, (256, 512), 19).total.macs, rel=0.01)
    assert _kind(f, "attention")["calls"] == sum(c.op.name == "attn" for b in arch.branches for c in b.cells)
    # the head's final resize and every fusion sum are seen, not only the cells
    assert _kind(f, "resize")["calls"] >= 1 and _kind(f, "elementwise")["calls"] > 0


def test_features_scale_with_the_input():
    arch = hy.load(zoo_path("hyctas_s.hy")).archs[0]
    small, big = arch_features(arch, (64, 64)), arch_features(arch, (128, 128))
    assert _kind(big, "conv3x3")["gmacs"] == pytest.approx(4 * _kind(small, "conv3x3")["gmacs"], rel=0.01)
    assert _kind(big, "conv3x3")["calls"] == _kind(small, "conv3x3")["calls"]


def _synthetic(n=12):
    # latency = 0.5 ms per-call overhead + 0.01 ms per conv call + 2 ms per GMAC of conv3x3
    width = 3 * len(KINDS)
    feats, ys = [], []
    for i in range(n):
        f = [0.0] * width
        f[0] = 10 + 3 * i  # conv3x3 calls
        f[1] = 0.1 * ((i * 7) % 5 + 1)  # conv3x3 GMACs
        feats.append(f)
        ys.append(0.5 + 0.01 * f[0] + 2.0 * f[1])
    return feats, ys


def test_fit_recovers_a_linear_law_and_estimates_its_error():
    feats, ys = _synthetic()
    m = LatencyModel.fit(feats, ys, {"type": "cpu", "name": "x", "torch": "2"}, PROTOCOL)
    assert m.intercept == pytest.approx(0.5, abs=1e-6)
    assert m.coef[0] == pytest.approx(0.01, abs=1e-6) and m.coef[1] == pytest.approx(2.0, abs=1e-6)
    assert m.error_max < 1e-6 and len(m.calibration) == len(ys)
    assert all(c >= 0 for c in m.coef)
    with pytest.raises(LatencyModelError, match="at least 4"):
        LatencyModel.fit(feats[:3], ys[:3], {}, PROTOCOL)


def test_save_load_and_refuse_another_device_or_protocol(tmp_path):
    feats, ys = _synthetic()
    here = device_fingerprint("cpu")
    m = LatencyModel.fit(feats, ys, here, PROTOCOL)
    path = tmp_path / "lat.json"
    m.save(path)
    data = json.loads(path.read_text())
    assert data["device"] == here and data["protocol"] == PROTOCOL and not list(tmp_path.glob("*.tmp*"))
    back = LatencyModel.load(path, here, PROTOCOL)
    assert back.predict(feats[3]) == pytest.approx(m.predict(feats[3]))
    with pytest.raises(LatencyModelError, match=r"calibrated for another device: name '.+' \(here 'Other CPU'\); calibrate one here"):
        LatencyModel.load(path, dict(here, name="Other CPU"), PROTOCOL)
    with pytest.raises(LatencyModelError, match=r"another protocol: input '1x3x64x64' \(here '1x3x512x1024'\)"):
        LatencyModel.load(path, here, dict(PROTOCOL, input="1x3x512x1024"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LatencyModelError, match="not a readable latency model"):
        LatencyModel.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(LatencyModelError, match="not a latency model"):
        LatencyModel.load(tmp_path / "other.json")
