"""Standalone export: TorchScript, tracing, torch.compile, ONNX + onnxruntime, self-contained
model.py files, and safetensors checkpoints (supernet and standalone) with clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from hyctas_dsl.compiler import Supernet, export
from hyctas_dsl.compiler.checkpoint import load_model, load_model_arch, load_supernet, save_model, save_supernet, write_python
from hyctas_dsl.language.errors import HyctasError

from tests.conftest import IN_CI
from tests.test_compiler_ops import random_arch, small_space

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

X = torch.randn(1, 3, 40, 72, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def arch():
    # two or three branches, fusion nodes, attention: the interesting paths
    for seed in range(100):
        a = random_arch(seed)
        if len(a.branches) >= 2 and a.fusions and any(c.op.name == "attn" for b in a.branches for c in b.cells):
            return a
    raise AssertionError("no such arch")


@pytest.fixture(scope="module")
def model(arch):
    torch.manual_seed(0)
    m = export(arch, classes=4).eval()
    # non-trivial BN statistics, so that a lost buffer shows
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
    return m


def _ref(model):
    with torch.no_grad():
        return model(X)


def test_module_names_follow_the_ast(arch, model):
    names = {n for n, _ in model.named_children()}
    assert "stem" in names and "head" in names
    assert f"{arch.branches[0].name}_1" in names
    f = arch.fusions[0]
    assert any(n.startswith(f"fuse_{f.src}_to_{f.dst}_") for n in names)


def test_torchscript_script_and_trace(model, tmp_path):
    ref = _ref(model)
    s = torch.jit.script(model)
    s.save(str(tmp_path / "m.pt"))
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    with torch.no_grad():
        assert (loaded(X) - ref).abs().max() < 1e-5
        t = torch.jit.trace(model, X)
        assert (t(X) - ref).abs().max() < 1e-5


def test_onnx_matches_onnxruntime(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (X,), str(path), dynamo=True, verbose=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: X.numpy()})[0]
    assert np.abs(got - _ref(model).numpy()).max() < 1e-4


@pytest.mark.slow
def test_torch_compile(model):
    # Inductor's C++ code generation takes minutes on two cores; CI compiles a one-cell net
    # with the aot_eager backend, which still traces the whole network with dynamo/AOT.
    if IN_CI:
        net = export(random_arch(0, max_layers=1), classes=2).eval()
        backend = "aot_eager"
    else:
        net, backend = model, "inductor"
    with torch.no_grad():
        ref = net(X)
        got = torch.compile(net, backend=backend, fullgraph=True)(X)
    assert (got - ref).abs().max() < 1e-5


def test_model_py_runs_without_hyctas(arch, model, tmp_path):
    py, weights = write_python(arch, tmp_path / "net.py", model=model)
    assert weights == tmp_path / "net.safetensors" and weights.exists()
    src = py.read_text()
    assert "import hyctas" not in src and "from hyctas" not in src
    np.save(tmp_path / "x.npy", X.numpy())
    runner = tmp_path / "run.py"
    runner.write_text(textwrap.dedent(
        """
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0].startswith('hyctas'):
                    raise ImportError('hyctas is blocked in this test')
        sys.meta_path.insert(0, Block())
        import numpy as np, torch
        import net
        m = net.load()
        assert m.layout == 'channels-last'
        assert m.head.out.weight.is_contiguous(memory_format=torch.channels_last)
        y = m(torch.from_numpy(np.load('x.npy')))
        np.save('y.npy', y.detach().numpy())
        y2 = net.load(channels_last=False)(torch.from_numpy(np.load('x.npy')))
        assert net.load(channels_last=False).layout == 'contiguous'
        assert (y2 - y).abs().max() < 1e-5
        assert not any(k.startswith('hyctas') for k in sys.modules)
        """
    ))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "run.py"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    y = np.load(tmp_path / "y.npy")
    assert np.abs(y - _ref(model).numpy()).max() < 1e-5


def test_model_py_from_a_supernet_equals_the_view(tmp_path):
    torch.manual_seed(1)
    sn = Supernet(small_space((4,), 2), classes=3)
    arch = random_arch(7, filters=4, max_layers=2)
    _py, weights = write_python(arch, tmp_path / "m.py", sn)
    m = load_model(weights).eval()
    with torch.no_grad():
        assert (m(X) - sn.subnet(arch).eval()(X)).abs().max() < 1e-5


def test_supernet_checkpoint_round_trip(tmp_path):
    torch.manual_seed(2)
    sn = Supernet(small_space((2, 4), 3), classes=6)
    for bn in sn.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "sn.safetensors"
    save_supernet(sn, path)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind
    back = load_supernet(path)
    assert back.space == sn.space and back.classes == 6
    a, b = sn.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    arch = random_arch(4, max_layers=3)
    with torch.no_grad():
        assert torch.equal(sn.subnet(arch).eval()(X), back.subnet(arch).eval()(X))
    with pytest.raises(HyctasError) as e:
        load_supernet(path, classes=19)
    assert e.value.codes == ["HY408"] and "6 classes" in str(e.value)


def test_standalone_checkpoint_round_trip(arch, model, tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(model, arch, path)
    back_arch, n = load_model_arch(path)
    assert back_arch == arch.model_copy(update={"meta": ()}) and n == 4
    back = load_model(path).eval()
    with torch.no_grad():
        assert torch.equal(back(X), _ref(model))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\xff" * 64, b"\x08\x00\x00\x00\x00\x00\x00\x00{}"])
def test_corrupt_files_give_one_clear_error(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    for fn in (load_supernet, load_model):
        with pytest.raises(HyctasError) as e:
            fn(path)
        assert e.value.codes == ["HY409"]
        assert "bad.safetensors" in str(e.value)


def test_wrong_kind_of_checkpoint(tmp_path, arch, model):
    path = tmp_path / "m.safetensors"
    save_model(model, arch, path)
    with pytest.raises(HyctasError) as e:
        load_supernet(path)
    assert "not a hyctas-supernet-1 checkpoint" in str(e.value)
    with pytest.raises(HyctasError) as e:
        load_model(tmp_path / "missing.safetensors")
    assert "no such file" in str(e.value)


def test_truncated_tensors_are_reported(tmp_path, arch, model):
    path = tmp_path / "m.safetensors"
    save_model(model, arch, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(HyctasError) as e:
        load_model(path)
    assert e.value.codes == ["HY409"]
