"""Task plug-ins: what differs between classification and detection, and nothing else.

Why: one engine (`train.engine.Run`) owns config, resume, checkpoints, logs, schedule,
threads, DDP and progress for every task, the way DETR's engine takes a model, a criterion
and a loader from a builder. A task gives the engine its release opener, model, criterion,
loaders, batch transforms, evaluation and the metric that picks best.pt.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import timm
from timm.data import resolve_data_config
from torch import nn

__all__ = ["Task", "create_model", "model_normalisation", "task_for", "task_named"]


class Task:
    """The task half of a run; subclasses fill in every method."""

    name: str        # a checkpoint's "task"
    best_key: str    # the checkpoint and summary key of the best score (best_top1, best_map)
    config_type: type

    def open_release(self, shards: Any, splits: Sequence[str], verify_digests: bool = False) -> Any:
        raise NotImplementedError

    def build(self, config: Any, release: Any) -> tuple[str, dict[str, Any], nn.Module, nn.Module]:
        """`(timm name, create_model kwargs, model, criterion)`, drawn from torch's seeded RNG."""
        raise NotImplementedError

    def criterion(self, config: Any, release: Any) -> nn.Module:
        raise NotImplementedError

    def loader(self, release: Any, split: str, **kwargs: Any) -> Any:
        raise NotImplementedError

    def transforms(self, config: Any, release: Any, mean: list[float], std: list[float], device: Any,
                   ) -> tuple[Any, Any]:
        """`(training transform with augmentation, plain transform for evaluation)`."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, criterion: nn.Module, batches: Iterable, transform: Any, release: Any,
                 **kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError

    def score(self, val: dict[str, Any]) -> float:
        """The validation number best.pt maximises."""
        raise NotImplementedError

    def settings(self, release: Any) -> dict[str, Any]:
        """Extra config.json entries."""
        return {}


def create_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """timm.create_model with the project's families registered; a bad keyword is a ValueError."""
    import train.models  # noqa: F401  (registers pevit_*, mivit_*, yolos_*)

    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"model {name} with {kwargs}: {reason}") from None


def model_normalisation(model: nn.Module) -> tuple[list[float], list[float]]:
    """The mean and std timm's data config gives `model` (the input normalisation it expects)."""
    cfg = resolve_data_config({}, model=model)
    return [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]


def task_for(config: Any) -> Task:
    """The task a config is for."""
    from train.config import DetectionConfig

    return task_named("detection" if isinstance(config, DetectionConfig) else "classification")


def task_named(name: str) -> Task:
    if name == "detection":
        from train.tasks.detection import DetectionTask

        return DetectionTask()
    if name == "classification":
        from train.tasks.classification import ClassificationTask

        return ClassificationTask()
    raise ValueError(f"unknown task {name!r}")
