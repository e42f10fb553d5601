"""Learning-rate schedules by epoch: constant, or Burda et al.'s stages of growing length.

Burda et al. (2016) train for sum_i 3^i = 3280 epochs, stage i (i = 0..7) lasting 3^i epochs at
lr 1e-3 * 10^(-i/7). ``staged`` generalises it: stage i lasts first_epochs * growth^i epochs at
lr * decay^i; after the last stage the last rate stays. Short presets shrink first_epochs.
"""

from __future__ import annotations

import math
from typing import Any

import torch

LR_SCHEDULES = ("constant", "staged")
BURDA_DECAY = 10 ** (-1 / 7)


def staged_total_epochs(stages: int, first_epochs: float, growth: float) -> float:
    """Epochs until the end of the last stage: first_epochs * (1 + growth + ... + growth^(stages-1))."""
    return first_epochs * stages if growth == 1 else first_epochs * (growth**stages - 1) / (growth - 1)


def staged_stage(epoch: float, stages: int, first_epochs: float, growth: float) -> int:
    """The 0-based stage that ``epoch`` (epochs completed) falls in; the last one after the end."""
    for stage in range(stages):
        if epoch < staged_total_epochs(stage + 1, first_epochs, growth) - 1e-9:
            return stage
    return stages - 1


def lr_at(epoch: float, lr: float, schedule: Any) -> float:
    """The learning rate after ``epoch`` epochs under ``schedule`` (train.lr_schedule's node)."""
    if schedule.name == "constant":
        return lr
    if schedule.name != "staged":
        raise ValueError(f"unknown lr schedule {schedule.name!r}; expected one of {', '.join(LR_SCHEDULES)}")
    stage = staged_stage(epoch, int(schedule.stages), float(schedule.first_epochs), float(schedule.growth))
    return lr * float(schedule.decay) ** stage


def lr_changes(train: Any, per_epoch: int, steps: int) -> dict[int, float]:
    """{step: lr} for the 1-based steps where ``train.lr_schedule`` starts a stage; empty for constant.

    Step s trains at ``lr_at((s - 1) / per_epoch)``: a stage starts with the first step whose batch
    lies at or past its first epoch, so fractional stage lengths (short presets) are kept to the step.
    """
    schedule = train.lr_schedule
    if schedule.name == "constant":
        return {}
    changes = {}
    for stage in range(1, int(schedule.stages)):
        first_epoch = staged_total_epochs(stage, float(schedule.first_epochs), float(schedule.growth))
        step = math.ceil(first_epoch * per_epoch - 1e-9) + 1
        if step <= steps:
            changes[step] = lr_at((step - 1) / per_epoch, float(train.lr), schedule)
    return changes


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group to ``lr``; cheap enough to call once per epoch (or per step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def schedule_epochs(schedule: Any) -> float | None:
    """How long a schedule runs in epochs (None for constant), for presets that train 'to the end'."""
    if schedule.name != "staged":
        return None
    return staged_total_epochs(int(schedule.stages), float(schedule.first_epochs), float(schedule.growth))
