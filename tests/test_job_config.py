"""The long jobs' options, from the command line and from TOML (jobs/config.py): every value a
job cannot use is refused where it is declared, in one line naming the file and key (exit 2),
before any work starts. Torch-free: these run on an install without the [train] extra."""

import pytest
from typer.testing import CliRunner

from hyctas_dsl.cli import _register_commands, app
from hyctas_dsl.jobs.config import SearchConfig, SupernetConfig, TrainConfig
from tests.conftest import ARCHS

_register_commands()
runner = CliRunner()
ARCH = str(ARCHS / "hyctas_s.hy")


def run(args, tmp_path, toml: str | bytes | None = None):
    if toml is not None:
        p = tmp_path / "c.toml"
        p.write_bytes(toml if isinstance(toml, bytes) else toml.encode())
        args = [*args, "--config", str(p)]
    r = runner.invoke(app, [*args, "--out" if args[0] != "search" else "--emit-dsl", str(tmp_path / "out")])
    return r


@pytest.mark.parametrize(
    "args, toml, message",
    [
        (["train-supernet"], "[supernet]\nsteps = true\n", "c.toml: option `steps`: Input should be a valid integer"),
        (["train-supernet"], "[supernet]\nsteps = \"3\"\n", "option `steps`"),
        (["train-supernet"], "[supernet]\ncrop = [0, 8]\n", "option `crop.0`"),
        (["train-supernet"], "[supernet]\ncrop = [8]\n", "option `crop.1`: Field required"),
        (["train-supernet"], "[supernet]\nlr = nan\n", "option `lr`: Input should be a finite number"),
        (["train-supernet"], "[supernet]\ndevice = \"tpu\"\n", "unknown device 'tpu'"),
        (["train-supernet"], "[supernet]\nseed = -1\n", "option `seed`"),
        (["train-supernet"], b"[supernet]\nsteps = 3 # \xff\n", "is not UTF-8"),
        (["train-supernet"], "[supernet\n", "c.toml:"),
        (["train-supernet"], "[other]\n", "unknown table [other]"),
        (["train-supernet"], "[supernet]\nstep = 3\n", "option `step`: Extra inputs are not permitted"),
        (["train-supernet", "--crop", "0x8"], None, "--crop must be HEIGHTxWIDTH"),
        (["train-supernet", "--device", "cuda:x"], None, "option --device"),
        (["train-supernet", "--scheme", "bignas"], None, "option --scheme"),
        (["train-supernet"], "[supernet]\ndistill = 2\n", "option `distill`"),
        (["train-supernet", "--random-subnets", "-1"], None, "option --random-subnets"),
        (["search"], "[search]\nbranches = []\n", "option `branches`"),
        (["search"], "[search]\nbranches = [4]\n", "option `branches.0`"),
        (["search"], "[search]\nlatency_seconds = inf\n", "option `latency_seconds`: Input should be a finite number"),
        (["search", "--branches", "1,x"], None, "--branches takes numbers"),
        (["search", "--latency-input", "64"], None, "--latency-input must be HEIGHTxWIDTH"),
        (["search", "--metric", "map"], None, "option --metric"),
        (["search", "--latency", "guess"], None, "option --latency"),
        (["search", "--latency-calibration", "2"], None, "option --latency-calibration"),
        (["search"], "[search]\nlatency_calibration = 1.5\n", "option `latency_calibration`"),
        (["search"], "[search]\nlatency_model = \"\"\n", "option `latency_model`"),
        (["train", ARCH], "[train]\naux = 1\n", "option `aux`: Input should be a valid boolean"),
        (["train", ARCH], "[train]\namp = \"fp8\"\n", "option `amp`"),
        (["train", ARCH, "--drop-path", "1.5"], None, "option --drop-path"),
        (["train", ARCH], "[train]\nworkers = 1000\n", "option `workers`"),
        (["train", ARCH, "--center-weight", "-1"], None, "option --center-weight"),
        (["train", ARCH, "--task", "detect"], None, "--task must be one of"),
    ],
)
def test_bad_values_are_one_line_before_any_work(tmp_path, args, toml, message):
    r = run(args, tmp_path, toml)
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing started


def test_train_takes_its_options_from_toml_and_the_command_line_wins(tmp_path):
    from hyctas_dsl.cli_support import job_config

    p = tmp_path / "c.toml"
    p.write_text("[train]\nsteps = 7\nlr = 0.01\naux = true\ncrop = [32, 64]\n")
    cfg = job_config(TrainConfig, "train", str(p), {"lr": 0.02, "steps": None})
    assert (cfg.steps, cfg.lr, cfg.aux, cfg.crop) == (7, 0.02, True, (32, 64))
    assert TrainConfig().steps == 300  # the default lives in the model


def test_defaults_in_the_help_come_from_the_models():
    for args, model, field in [(["train", "--help"], TrainConfig, "steps"), (["train-supernet", "--help"], SupernetConfig, "steps"),
                               (["search", "--help"], SearchConfig, "population"),
                               (["search", "--help"], SearchConfig, "latency_calibration")]:
        r = runner.invoke(app, args)
        want = model.model_fields[field].default
        assert f"[default: {want}" in " ".join(r.output.split()), args


@pytest.mark.parametrize("args, message", [
    (["--seconds", "inf"], "--seconds must lie in"),
    (["--seconds", "nan"], "--seconds must lie in"),
    (["--classes", "99999999999999999999999"], "--classes must lie in 1..10000"),
])
def test_bench_options_that_would_hang_or_overflow(args, message):
    r = runner.invoke(app, ["bench", ARCH, "--input", "64x64", *args])
    assert r.exit_code == 2 and message in r.output
