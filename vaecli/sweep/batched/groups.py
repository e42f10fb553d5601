"""Which sweep members can train together as one stacked model, and in how many groups.

Members may differ only in ``beta``, ``seed``, ``latent_size`` and their objective's settings
(``objective.gamma``, ``objective.c_max``, ``objective.free_bits``, ...); another objective, or any
other difference (hidden sizes, batch size, steps or epochs, learning rate, data, device, ...),
puts them in different groups. ``train.lr`` is a grouping key because one fused Adam over the stacks has one lr.
Keys that change neither the numbers nor the shapes (progress bar, thread count) are ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from omegaconf import OmegaConf

from vaecli.config.runtime import pick_device
from vaecli.data.tensors import steps_per_epoch
from vaecli.models.likelihoods import DISCRETISED
from vaecli.run.bookkeeping import total_steps
from vaecli.run.schedules import lr_changes
from vaecli.sweep.batched.trainer import GroupSettings, Member

MEMBER_KEYS = ("beta", "seed", "latent_size")  # may differ inside a group
STACKED = {  # what the stacked models and trainer implement (a key a model lacks is no obstacle)
    "model.name": ("mlp", "conv"),  # mlp: StackedVAE (batched matrix products); conv: GroupedConvStack
    "model.init": ("seed",),
    "model.scale": ("softplus",),
    "model.output_bias": ("zero",),
}


def stackable(cfg: Any) -> bool:
    """Whether the stacked model and trainer implement this member, and pay (else it trains alone, as
    under the basic launcher, inside the batched launcher's process).

    Conv members stack only off the CPU: there, 4 members as grouped convolutions took 311 ms a step
    against 225 ms for the 4 one after another (64 x 64 colour, batch 64, 2 cores;
    benchmarks/stacked_conv.py), so a CPU sweep trains them one by one.
    """
    if OmegaConf.select(cfg, "model.name") == "conv" and pick_device(str(cfg.device)).type == "cpu":
        return False
    for key, supported in STACKED.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and value not in supported:
            return False
    # StackedVAE has no learned output scale: an MLP with a discretised logistic trains alone
    return not (OmegaConf.select(cfg, "model.name") in (None, "mlp") and cfg.model.get("likelihood") == DISCRETISED)


def member_builder(cfg: Any) -> Any:
    """``latent_size -> model``: a member's architecture built as its solo run builds it, at any latent size."""
    from vaecli.models.registry import build_model

    def build(latent_size: int) -> Any:
        member = OmegaConf.merge(cfg, {"latent_size": latent_size})
        return build_model(member)

    return build


IGNORED_KEYS = ("threads", "train.progress")  # change nothing a member computes


def group_key(cfg: Any) -> str:
    """The config with the member keys and the ignored keys removed, as canonical JSON."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    for dotted in (*MEMBER_KEYS, *IGNORED_KEYS):
        *parents, last = dotted.split(".")
        node = plain
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    objective = plain.get("objective")
    if isinstance(objective, dict):  # its weights are per member; the objective itself is not
        plain["objective"] = {"name": objective.get("name", "beta")}
    return json.dumps(plain, sort_keys=True, default=str)


def plan_groups(cfgs: Sequence[Any], max_group: int, starts: Sequence[int] | None = None) -> list[list[int]]:
    """Member indices grouped by :func:`group_key` (in first-seen order), split into groups of at most
    ``max_group`` of near-equal size (17 members and max 16 give 9 + 8, not 16 + 1).

    ``starts`` are the steps the members continue from (a stopped sweep run again): a stacked
    model takes one step for all, so only members continuing from the same step share a group.
    """
    if max_group < 1:
        raise ValueError("max_group must be >= 1")
    starts = starts if starts is not None else [0] * len(cfgs)
    by_key: dict[tuple[str, int], list[int]] = {}
    for index, cfg in enumerate(cfgs):
        by_key.setdefault((group_key(cfg), int(starts[index])), []).append(index)
    groups: list[list[int]] = []
    for indices in by_key.values():
        parts = math.ceil(len(indices) / max_group)
        size, extra = divmod(len(indices), parts)
        start = 0
        for part in range(parts):
            end = start + size + (1 if part < extra else 0)
            groups.append(indices[start:end])
            start = end
    return groups


def plain_beta(cfg: Any) -> bool:
    """The seed's objective as it is (no warm-up, cycles or free bits): the stacked step's own fast path."""
    objective = cfg.get("objective") or {}
    extras = ("warmup_steps", "cycles", "free_bits")
    return objective.get("name", "beta") == "beta" and not any(objective.get(key, 0) for key in extras)


def member_of(cfg: Any) -> Member:
    """A member's own values; its objective built (as its solo run builds it) unless it is the plain beta-ELBO."""
    from vaecli.objectives.registry import build_objective

    objective = None if plain_beta(cfg) else build_objective(cfg)
    return Member(seed=int(cfg.seed), beta=float(cfg.beta), latent_size=int(cfg.latent_size), objective=objective)


def settings_of(cfg: Any, examples: int) -> GroupSettings:
    """The shared settings of ``cfg``'s group; ``examples`` is the training set size (for train.epochs)."""
    steps = total_steps(cfg, examples)
    per_epoch = steps_per_epoch(examples, int(cfg.train.batch_size))
    return GroupSettings(
        steps=steps,
        batch_size=int(cfg.train.batch_size),
        lr=float(cfg.train.lr),
        shuffle=bool(cfg.train.shuffle),
        eval_every=cfg.train.eval_every,
        hidden_sizes=tuple(int(size) for size in cfg.model.hidden_sizes),
        min_scale=float(cfg.model.min_scale),
        model=str(cfg.model.get("name", "mlp")),
        build=None if cfg.model.get("name", "mlp") == "mlp" else member_builder(cfg),
        betas=(float(cfg.train.adam_betas[0]), float(cfg.train.adam_betas[1])),
        eps=float(cfg.train.adam_eps),
        lr_changes=tuple(sorted(lr_changes(cfg.train, per_epoch, steps).items())),
        likelihood=str(cfg.model.likelihood),
        activation=str(cfg.model.get("activation", "relu")),
        binarize=str(cfg.data.binarize),
    )


def members_of(cfgs: Sequence[Any]) -> list[Member]:
    """A group's members; when one trains through its objective, all do (a plain one through BetaElbo)."""
    from vaecli.objectives.registry import build_objective

    members = [member_of(cfg) for cfg in cfgs]
    if all(member.objective is None for member in members):
        return members
    return [replace(member, objective=member.objective or build_objective(cfg)) for member, cfg in zip(members, cfgs)]
