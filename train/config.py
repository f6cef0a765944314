"""Run settings: `TrainConfig` (classification) and `DetectionConfig`, one dataclass field each.

Why one place: a field's default, help, option name, choices and bounds are its metadata
(`setting`), so the command line (`train.cli.config_options`) and validation are generated
from them and cannot drift from the engine. A config is saved in every checkpoint; a
resumed run keeps it except for the fields marked `resumable` (where and how loudly, not
what is computed). No torch here: `train-encrypted --help` must not need the train extra.
"""
from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any

__all__ = ["ANCHORS", "DetectionConfig", "LOSSES", "RunConfig", "TrainConfig", "setting"]

LOSSES = ("ce", "anchor-euclidean", "anchor-cosine")
ANCHORS = ("simplex", "orthogonal")


def setting(default: Any = MISSING, help: str = "", *, factory: Any = MISSING, option: str | None = None,
            metavar: str | None = None, choices: tuple[str, ...] = (), at_least: float | None = None,
            above: float | None = None, at_most: float | None = None, below: float | None = None,
            nullable: bool = False, path: bool = False, resumable: bool = False,
            internal: bool = False) -> Any:
    """A config field whose metadata the CLI and `RunConfig.__post_init__` read.

    `option`: the flag when not `--field-name`; `nullable`: "none" on the command line is
    None; `internal`: no option of its own (set another way).
    """
    meta = {"help": help, "option": option, "metavar": metavar, "choices": choices, "nullable": nullable,
            "path": path, "resumable": resumable, "internal": internal,
            "bounds": (at_least, above, at_most, below)}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _out_of_bounds(value: Any, bounds: tuple) -> str | None:
    """The rule `value` breaks, e.g. "in [0, 1]", or None."""
    at_least, above, at_most, below = bounds
    low = (at_least is None or value >= at_least) and (above is None or value > above)
    high = (at_most is None or value <= at_most) and (below is None or value < below)
    if low and high:
        return None
    lo = f"[{at_least}" if at_least is not None else f"({above}" if above is not None else None
    hi = f"{at_most}]" if at_most is not None else f"{below})" if below is not None else None
    if lo and hi:
        return f"in {lo}, {hi}"
    if lo:
        return f"at least {at_least}" if at_least is not None else f"> {above}"
    return f"at most {at_most}" if at_most is not None else f"< {below}"


@dataclass
class RunConfig:
    """What every training run is made of, whatever the task."""

    shards: str = setting(help="Release folder or store URL (s3://bucket/release): manifest.json + shards "
                               "from encrypt-dataset.", metavar="OUT",
                          path=True, resumable=True)
    out: str = setting(help="Run folder: config.json, metrics.jsonl, last.pt, best.pt.", metavar="RUN", path=True,
                       resumable=True)
    model: str = setting("auto", "auto / tiny / small / base: the model that fits the release's cipher; "
                                 "or any timm model name.")
    model_kwargs: dict[str, Any] = setting(
        factory=dict, option="--model-arg", metavar="KEY=VALUE",
        help="Extra timm.create_model keyword, repeatable: --model-arg depth=6 --model-arg drop_path_rate=0.1.")
    init_from: str | None = setting(None, "Start from these weights: a timm .safetensors/.pth file, timm:NAME "
                                          "(local Hugging Face cache only) or a run's best.pt; converted to the "
                                          "cipher's model (see docs).", metavar="WEIGHTS", nullable=True)
    epochs: int = setting(10, "A resumed run may raise it: the cosine is stretched to the new end.", at_least=1)
    batch_size: int = setting(128, "Per process.", at_least=1)
    lr: float = setting(5e-4, "Peak AdamW learning rate.", above=0)
    weight_decay: float = setting(0.05, at_least=0)
    warmup_epochs: int = setting(1, "Linear warm-up before the cosine decay.", at_least=0)
    min_lr: float = setting(1e-6, "Where the cosine ends, with the last epoch.", at_least=0)
    clip_grad: float = setting(1.0, "Gradient norm clip (0: off).", at_least=0)
    hflip: float = setting(0.5, "Probability of a flip that commutes with the cipher (per token for shuffled "
                                "shards).", at_least=0, at_most=1)
    amp: bool = setting(False, "bf16 autocast on CUDA (CPU stays float32).")
    workers: int = setting(2, "DataLoader workers per process.", at_least=0, resumable=True)
    shuffle_buffer: int = setting(1000, "Samples in the shuffle buffer.", at_least=0)
    seed: int = setting(0)
    train_split: str = setting("train")
    val_split: str | None = setting("val", "Split evaluated; none: no evaluation (and no best.pt).", nullable=True)
    eval_every: int = setting(1, "Evaluate every N epochs (and after the last).", at_least=1, resumable=True)
    verify_digests: bool = setting(False, "Hash every shard against the manifest before training.",
                                   resumable=True)
    log_every: int = setting(50, "Steps between metrics.jsonl lines.", at_least=1, resumable=True)
    checkpoint_every: int = setting(0, "Also write last.pt every N steps inside an epoch (0: at epoch ends "
                                       "only).", at_least=0, resumable=True)
    progress: bool = setting(True, "Progress bar on a terminal (the CLI's --quiet).", internal=True,
                             resumable=True)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["choices"] and value not in f.metadata["choices"]:
                raise ValueError(f"{f.name} must be one of {', '.join(f.metadata['choices'])}, got {value!r}")
            rule = _out_of_bounds(value, f.metadata["bounds"]) if isinstance(value, (int, float)) else None
            if rule:
                raise ValueError(f"{f.name} must be {rule}, got {value}")

    @classmethod
    def resumable(cls) -> tuple[str, ...]:
        """Fields a resumed run may change: they change where and how loudly, not what is learned.
        (workers changes which worker reads which shard, hence the batches: see docs.)"""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["resumable"])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainConfig(RunConfig):
    """A classification run. `model`: "auto" (the tiny model that fits the release's cipher), a
    size (tiny, small, base) or any timm name; the cipher's geometry is always passed,
    `model_kwargs` go on top (e.g. depth=2)."""

    loss: str = setting("ce", choices=LOSSES)
    anchors: str = setting("simplex", "Anchor choice for the anchor losses: maximal separation or orthogonality.",
                           choices=ANCHORS)
    anchor_scale: float = setting(10.0, "Softmax sharpness of the anchor losses.", above=0)
    label_smoothing: float = setting(0.0, at_least=0, below=1)
    color_jitter: float = setting(0.0, "Brightness/contrast/saturation spread.", at_least=0)
    mixup: float = setting(0.0, "Mixup Beta alpha (0: off).", at_least=0)
    cutmix: float = setting(0.0, "Token-cutmix Beta alpha (0: off).", at_least=0)
    token_drop: float = setting(0.0, "Fraction of tokens zeroed.", at_least=0, at_most=1)

    def augmentation(self) -> Any:
        from train.data import Augmentation

        return Augmentation(hflip=self.hflip, color_jitter=self.color_jitter, mixup=self.mixup,
                            cutmix=self.cutmix, token_drop=self.token_drop)


@dataclass
class DetectionConfig(RunConfig):
    """A detection run (YOLOS-style on a `mix` COCO release). Loss weights and matcher costs
    are DETR's. Defaults differ from classification where DETR's recipe does."""

    shards: str = setting(help="Detection release (encrypt-dataset coco ... --mode mix).", metavar="OUT",
                          path=True, resumable=True)
    model: str = setting("auto", "auto, a size (nano, tiny, small, base) or a registered yolos_* name.")
    epochs: int = setting(50, "A resumed run may raise it: the cosine is stretched to the new end.", at_least=1)
    batch_size: int = setting(16, "Per process.", at_least=1)
    lr: float = setting(2.5e-4, "Peak AdamW learning rate.", above=0)
    weight_decay: float = setting(1e-4, at_least=0)
    hflip: float = setting(0.5, "Probability of a horizontal flip (boxes follow).", at_least=0, at_most=1)
    num_det_tokens: int = setting(100, "Detection tokens (max objects per image).", option="--det-tokens",
                                  at_least=1)
    aux_loss: bool = setting(False, "Also match and score every block's detection tokens (DETR's aux loss).")
    eos_coef: float = setting(0.1, "Weight of the no-object class in the class loss.", above=0, at_most=1)
    cost_class: float = setting(1.0, "Matcher cost of the class probability.", at_least=0)
    cost_bbox: float = setting(5.0, "Matcher cost of the L1 box distance.", at_least=0)
    cost_giou: float = setting(2.0, "Matcher cost of the GIoU.", at_least=0)
    loss_ce: float = setting(1.0, "Loss weight of the class term.", at_least=0)
    loss_bbox: float = setting(5.0, "Loss weight of the L1 box term.", at_least=0)
    loss_giou: float = setting(2.0, "Loss weight of the GIoU term.", at_least=0)
