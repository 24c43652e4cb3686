"""Run configuration: every option of the long jobs (train-supernet, search, train) can come
from a TOML file, validated by pydantic where each option is declared, so a job never sees a
value it cannot use: unknown keys, wrong types (``steps = true`` is not 1), non-finite
numbers, a crop that is not positive, a device that is not one are all errors naming the
file and key. The effective config is written beside the results so a run can be repeated
exactly.

A config file has one table per command::

    [supernet]
    steps = 600
    batch = 16

    [search]
    objective = "latency"
    population = 8

    [train]
    steps = 300
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hyctas_dsl.jobs.errors import ConfigError

__all__ = ["SupernetConfig", "SearchConfig", "TrainConfig", "ConfigError", "load_config", "merge", "TABLES"]

# The table of a config file that each job reads.
TABLES = ("supernet", "search", "train")

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

# A height or width in pixels (a crop, a latency input).
Pixels = Annotated[int, Field(ge=1, le=1 << 16)]


class _Config(BaseModel):
    # strict: TOML's `true` is not the number 1, nor "3" the number 3 (ints still fill
    # float fields); no NaN or infinity anywhere (`latency_seconds = inf` would time forever).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)

    @field_validator("crop", "latency_input", mode="before", check_fields=False)
    @classmethod
    def _size_from_list(cls, v):
        """TOML has arrays, not tuples: ``crop = [64, 64]``."""
        return tuple(v) if isinstance(v, list) else v

    @field_validator("device", check_fields=False)
    @classmethod
    def _device_spelling(cls, v: str) -> str:
        """Whether the machine has it is checked when the job starts (that needs torch)."""
        if not _DEVICE.fullmatch(v):
            raise ValueError(f"unknown device {v!r}; use auto, cpu, cuda, cuda:N or mps")
        return v


class SupernetConfig(_Config):
    """Supernet training (paper section 4.2, "Search"); defaults sized for the embedded data."""

    space: str = Field("digits", description="space file, or the name of one in archs/ (digits, paper)")
    data: str = Field("digits", description="dataset spec: digits, cityscapes:DIR, ade20k:DIR, folder:DIR")
    out: str = Field("runs/supernet", description="output directory")
    # Sized for the embedded digits: each of the six heads and every op position must see
    # enough steps; at 600 steps every subnet still predicted background (measured).
    # The cells learn once each gets enough updates: 3000 steps of one subnet left them at
    # initialisation (the stem carried every score); 10000 steps of two subnets (one per
    # process, batch 8 each) learn them in ~6.5 minutes on 2 cores (docs/search_quality.md).
    steps: int = Field(10000, ge=1, description="training steps, one sampled subnet each per process (--subnet-per-rank)")
    batch: int = Field(16, ge=1, description="global batch (the paper: 16)")
    crop: Optional[tuple[Pixels, Pixels]] = Field(None, description="training crop HxW (default: the dataset's)")
    optimizer: Optional[Literal["sgd", "adamw"]] = Field(
        None, description="sgd (the paper) or adamw; default: sgd, but adamw on the embedded digits"
    )
    lr: Optional[float] = Field(None, gt=0, description="initial learning rate; default: 0.02 for sgd (the paper), 0.003 for adamw")
    lr_decay: float = Field(0.992, gt=0, le=1, description="exponential decay factor (the paper: 0.992)")
    decay_every: Optional[int] = Field(
        None, ge=1, description="steps between two decays (lr x0.992 each); default: 100 on the embedded digits, else 30"
    )
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    scheme: Optional[Literal["paper", "sandwich"]] = Field(
        None, description="paper: one subnet per step with the branch prior; sandwich: largest + smallest + random "
        "subnets per step (BigNAS); default: paper"
    )
    random_subnets: int = Field(2, ge=0, description="sandwich: random subnets per step besides the largest and smallest")
    distill: Optional[float] = Field(
        None, ge=0, le=1, description="sandwich: weight of in-place distillation from the largest subnet (0: labels only)"
    )
    branch_balance: Optional[bool] = Field(
        None, description="random subnets cycle through the branch counts instead of drawing from the branch prior"
    )
    output_stride_aux: Optional[float] = Field(
        None, ge=0, description="weight of the loss at the head's other output stride on every step (the body runs once); "
        "0: off; default: 0"
    )
    stem_drop: Optional[float] = Field(
        None, ge=0, le=1, description="probability per subnet and step that the head gets zeros in place of the stem's "
        "stride-4 feature, so output-stride-4 subnets are scored by their cells too; default: 0.5 on the embedded "
        "digits (when the space has output stride 4), else 0"
    )
    procs: Optional[int] = Field(
        None, ge=1, le=64, description="processes training in parallel on this machine (gloo; under torchrun, its world "
        "size); default: 1, but 2 on the embedded digits on a CPU with 2 or more cores"
    )
    subnet_per_rank: Optional[bool] = Field(
        None, description="with several processes, each trains its own sampled subnet on its share of the batch "
        "(one subnet per process per step); false: all train the same one; default: true on the embedded digits"
    )
    shared_classifier: bool = Field(
        True, description="every head's stride-4 merge and classifier are one module (false: one per head)"
    )
    seed: int = Field(0, ge=0, description="seeds numpy generators, which take no negative seeds")
    # a checkpoint of the digits supernet with its AdamW moments is 82 MB and 0.22-0.35 s to
    # check and write: every 100 steps would cost the demo ~30 s
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")
    workers: Optional[int] = Field(None, ge=0, le=64, description="DataLoader workers (default: 0 for in-memory digits, else 2)")
    device: str = "auto"


    # What runs from before an option existed did, for resuming them exactly.
    LEGACY: ClassVar[dict[str, Any]] = {"procs": 1, "subnet_per_rank": False, "stem_drop": 0.0}

    def resolved(self) -> "SupernetConfig":
        """Fill the data-dependent defaults. The paper's SGD at lr 0.02 needs far more than a
        CPU demo's few minutes to lift a supernet above predicting background on the digit
        scenes (measured: mIoU 0.085 after 600 steps for a fixed net, vs 0.35 with AdamW at
        0.003), so the embedded data defaults to AdamW; real data sets get the paper's SGD."""
        opt = self.optimizer or ("adamw" if self.data.split(":")[0] == "digits" else "sgd")
        lr = self.lr if self.lr is not None else (0.003 if opt == "adamw" else 0.02)
        # One subnet per step (the paper's scheme) everywhere; on the digits the branch counts
        # take turns (the configuration whose ranking was measured best, docs/search_quality.md),
        # on real data sets the prior 0.2 / 0.3 / 0.5 of eq. 2.
        digits = self.data.split(":")[0] == "digits"
        scheme = self.scheme or "paper"
        distill = self.distill if self.distill is not None else 0.0
        balance = self.branch_balance if self.branch_balance is not None else digits
        aux = self.output_stride_aux if self.output_stride_aux is not None else 0.0
        # on the digits the head learns half its steps without the stem's stride-4 shortcut: the
        # supernet then ranks subnets closer to training them from scratch (Pearson 0.82 and 0.85
        # in two runs vs 0.73 without; docs/search_quality.md, item 8)
        stem_drop = self.stem_drop if self.stem_drop is not None else (0.5 if digits else 0.0)
        per_rank = self.subnet_per_rank if self.subnet_per_rank is not None else digits
        # the digits' 10000 steps decay as the demo's 3000 did every 30: the same lr curve, stretched
        decay_every = self.decay_every or (100 if digits else 30)
        return self.model_copy(update={"optimizer": opt, "lr": lr, "scheme": scheme, "distill": distill, "branch_balance": balance,
                                       "output_stride_aux": aux, "stem_drop": stem_drop, "subnet_per_rank": per_rank,
                                       "decay_every": decay_every})


class SearchConfig(_Config):
    """NSGA-II search (section 3.4, Algorithm 1); defaults sized for the embedded data."""

    supernet: Optional[str] = Field(None, description="supernet run directory (default: train one first)")
    data: str = "digits"
    out: str = Field("runs/search", description="where the Pareto front is written as .hy files")
    objective: Literal["latency", "flops", "params"] = "latency"
    branches: list[Annotated[int, Field(ge=1, le=3)]] = Field(
        default_factory=lambda: [1, 2, 3], min_length=1, description="one search per branch count (1 to 3)")
    population: int = Field(8, ge=2, description="the paper: 40")
    generations: int = Field(4, ge=1, description="the paper: 20")
    crossover: float = Field(0.9, ge=0, le=1)
    mutation: float = Field(0.02, ge=0, le=1)
    miou_min: float = Field(0.0, ge=0, le=1, description="Algorithm 1: keep offspring above this mIoU")
    metric: Literal["miou", "pq"] = Field("miou", description="accuracy objective: mIoU, or PQ (needs a panoptic supernet)")
    bn_images: int = Field(128, ge=1, description="images to recompute BatchNorm statistics (the paper: 1000)")
    val_images: int = Field(256, ge=1, description="validation images per candidate")
    latency_seconds: float = Field(0.3, gt=0, description="timed seconds per latency measurement (the paper: 6)")
    latency_input: Optional[tuple[Pixels, Pixels]] = Field(None, description="HxW for latency (default: the data's size)")
    latency: Literal["measure", "predict"] = Field(
        "predict", description="rank by a stopwatch on every candidate, or by the calibrated latency model "
        "(only what is written out is measured)")
    latency_model: Optional[str] = Field(
        None, min_length=1, description="latency model JSON: reused when it exists and fits this device and protocol, "
        "else calibrated and saved (default: OUT/latency_model.json)")
    # 12 hold the records' correction (4 inputs); the features model (30 inputs) wants 24
    latency_calibration: int = Field(12, ge=4, description="random subnets measured to calibrate the latency model")
    latency_predictor: Literal["records", "features"] = Field(
        "records", description="records: each distinct module timed once on this device, summed, plus a fitted "
        "correction (nn-Meter); features: a regression on the traced per-op features")
    seed: int = Field(0, ge=0, description="seeds numpy generators, which take no negative seeds")
    device: str = "auto"


class TrainConfig(_Config):
    """Retraining (paper section 4.2 "Retrain"); defaults sized for the embedded digits."""

    data: str = Field("digits", description="dataset spec: digits, cityscapes:DIR, ade20k:DIR, folder:DIR")
    out: str = Field("runs/train", description="output directory")
    steps: int = Field(300, ge=1, description="training steps (the paper: 186k at batch 32)")
    batch: int = Field(8, ge=1, description="global batch (the paper: 32)")
    crop: Optional[tuple[Pixels, Pixels]] = Field(None, description="training crop HxW (default: the dataset's)")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd (the paper) or adamw (learns short CPU budgets faster)")
    lr: float = Field(0.005, gt=0, description="initial learning rate of the poly schedule (the paper: 0.005)")
    power: float = Field(0.9, gt=0, description="poly power")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    drop_path: float = Field(0.2, ge=0, lt=1, description="final scheduled drop-path probability (Table 9: 0.2)")
    aux: bool = Field(False, description="auxiliary losses on the stride-16 and stride-32 branch outputs")
    aux_weight: float = Field(0.4, ge=0)
    ohem: bool = Field(False, description="online hard-pixel mining")
    ohem_thresh: float = Field(0.7, gt=0, lt=1, description="OHEM: keep pixels whose true-class probability is below this")
    ohem_min_kept: int = Field(256, ge=1, description="OHEM: keep at least this many pixels per image")
    amp: Literal["none", "bf16"] = "none"
    seed: int = Field(0, ge=0, description="seeds numpy generators, which take no negative seeds")
    checkpoint_every: int = Field(100, ge=1)
    eval_images: int = Field(256, ge=0, description="validation images for the final mIoU (0: skip)")
    workers: Optional[int] = Field(None, ge=0, le=64)
    device: str = "auto"
    # panoptic archs (``task panoptic``): Panoptic-DeepLab's loss weights and centre Gaussian
    center_weight: float = Field(200.0, ge=0, description="panoptic: weight of the centre heatmap MSE (Panoptic-DeepLab: 200)")
    offset_weight: float = Field(0.01, ge=0, description="panoptic: weight of the centre offset L1 (Panoptic-DeepLab: 0.01)")
    center_sigma: float = Field(8.0, gt=0, description="panoptic: sigma in pixels of the centre Gaussians (Panoptic-DeepLab: 8)")


def load_config(path: str | None) -> dict:
    """The raw tables of a TOML config file ({} without one)."""
    if path is None:
        return {}
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: byte {e.start} is not UTF-8; save the config as UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    unknown = set(data) - set(TABLES)
    if unknown:
        raise ConfigError(f"{path}: unknown table [{sorted(unknown)[0]}]; use " + ", ".join(f"[{t}]" for t in TABLES))
    return data


def merge(model: type[_Config], path: str | None, table: dict, overrides: dict):
    """Defaults < config file table < command-line options (those not left as None)."""
    values = dict(table)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model(**values)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        top = str(err["loc"][0]) if err["loc"] else key
        if overrides.get(top) is not None:  # given on the command line
            raise ConfigError(f"option --{top.replace('_', '-')}: {err['msg']}") from None
        where = f"{path}: " if path and top in table else ""
        raise ConfigError(f"{where}option `{key}`: {err['msg']}") from None
