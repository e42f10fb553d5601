"""The stacks of a group (model, Adam, random streams) and each member's state out of them and back in.

:class:`StackedState` owns everything a group's members are made of; the loop
(:class:`vaecli.sweep.batched.trainer.StackedTrainer`) adds only how it steps them. Taking member i
out gives what `vae train` saves (a plain VAE's state_dict, a plain Adam state, its noise and
shuffle generator states, the loop's position), so its checkpoint.pt is an ordinary one.
:meth:`StackedState.restore` puts such a checkpoint back into member i's slot, so a stopped (or
killed) batched member continues exactly where it was, alone or in a group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vaecli.data.tensors import batch_binarizer
from vaecli.run.bookkeeping import Position
from vaecli.run.loop import make_optimizer
from vaecli.run.schedules import set_lr
from vaecli.sweep.batched.model import StackedVAE
from vaecli.sweep.batched.streams import NoiseStreams, StackedBatches, solo_start
from vaecli.sweep.batched.vmapped import GroupedConvStack


@dataclass(frozen=True)
class Member:
    """What may differ between the members of one group."""

    seed: int
    beta: float
    latent_size: int
    objective: Any = field(default=None, compare=False)  # built when not the plain beta-ELBO (its own state)


@dataclass(frozen=True)
class GroupSettings:
    """What the members of one group share (anything else that differs puts them in other groups)."""

    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    shuffle: bool = True
    eval_every: int | None = None
    hidden_sizes: tuple[int, ...] = (100, 100)
    min_scale: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's
    eps: float = 1e-8  # Adam's
    lr_changes: tuple[tuple[int, float], ...] = ()  # (step, lr) where the lr schedule starts a stage
    likelihood: str = "bernoulli"
    activation: str = "relu"
    model: str = "mlp"  # mlp: StackedVAE; conv: GroupedConvStack
    build: Any = field(default=None, compare=False)  # latent_size -> a member's model, for every model but mlp
    binarize: str = "none"  # only "dynamic" concerns the loop (a fresh draw of each member's batch)


@dataclass
class Failure:
    step: int
    message: str
    kind: str = "TrainingDiverged"  # the exception the solo loop raises for the same failure

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"  # as a solo run's result.json words its error


@dataclass
class MemberResult:
    member: Member
    rows: list[dict[str, Any]]
    failure: Failure | None = None

    @property
    def status(self) -> str:
        return "failed" if self.failure else "ok"

    @property
    def final(self) -> dict[str, dict[str, Any]]:
        """The last train and test rows, as the solo loop's TrainResult.final has them (missing splits left out)."""
        last: dict[str, dict[str, Any]] = {}
        for row in self.rows:
            last[row["split"]] = row
        return last


def stacked_model(models: Sequence[torch.nn.Module], settings: GroupSettings) -> torch.nn.Module:
    """The members as one model: the MLP by hand (StackedVAE), the conv net as grouped convolutions."""
    if settings.model == "mlp":
        return StackedVAE(models)
    return GroupedConvStack(models, settings.build)


class StackedState:
    """A group's members as stacks: one stacked model, one Adam over it, each member's own streams.

    Members are numbered by their position in ``members``; a member keeps its number after others
    fail, while its slot in the stacks (``running.index(number)``) may change.
    """

    def __init__(
        self,
        members: Sequence[Member],
        settings: GroupSettings,
        train_images: torch.Tensor,
        test_images: torch.Tensor,
        device: torch.device | str = "cpu",
    ):
        self.members, self.settings, self.device = list(members), settings, torch.device(device)
        starts = [solo_start(m.seed, m.latent_size, settings) for m in self.members]
        self.model = stacked_model([model for model, _ in starts], settings).to(self.device)
        self.optimizer = self._adam(self.model)
        self.binarizers = [batch_binarizer(settings.binarize, m.seed, self.device) for m in self.members]
        self.train_images, self.test_images = train_images.to(self.device), test_images.to(self.device)
        self.batches = StackedBatches(
            self.train_images, settings.batch_size, settings.shuffle, [m.seed for m in members]
        )
        self.noise = NoiseStreams([noise for _, noise in starts], self.model.latent_sizes, self.model.latent_size)
        self.running = list(range(len(self.members)))  # member number of each stack slot
        self.with_objectives = any(m.objective is not None for m in self.members)
        if self.with_objectives:  # every member through its objective (a plain beta member gets BetaElbo)
            from vaecli.objectives.registry import start_objective

            for m in self.members:
                start_objective(m.objective, len(self.train_images), settings.steps, self.device)
        self.results = [MemberResult(member, []) for member in self.members]
        self.position = Position()  # the solo loop's, shared by every member (they step together)
        self._stopped: dict[int, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}
        self._restored: set[int] = set()  # members put back from a checkpoint (:meth:`restore`)
        self._refresh_constants()

    @property
    def step(self) -> int:
        """Steps taken by every running member."""
        return self.position.step

    def _adam(self, model: torch.nn.Module) -> torch.optim.Adam:
        """The solo loop's Adam (fused where the device has it) with the group's settings."""
        return make_optimizer(model, self.settings.lr, self.device, self.settings.betas, self.settings.eps)

    def _refresh_constants(self) -> None:
        """Per-member betas, latent sizes and KL weights for the members still in the stacks."""
        members = [self.members[i] for i in self.running]
        batch, mask = self.batches.batch_size, self.model.latent_mask
        self.betas = torch.tensor([m.beta for m in members], device=self.device)
        self.latent_sizes = torch.tensor([float(m.latent_size) for m in members], device=self.device)
        # d loss / d KL element = beta / (batch * latent size), as backward_beta_elbo; zero on padding
        per_member = torch.tensor([m.beta / (batch * m.latent_size) for m in members], device=self.device)
        self.kl_weight = mask * per_member.view(-1, 1, 1)

    def drop(self, failed: dict[int, Failure]) -> None:
        """Take members out of the stacks (their last state kept for inspection) and record why."""
        for i, failure in failed.items():
            self._stopped[i] = (self.member_state_dict(i), self.member_optimizer_state_dict(i))
            self.results[i].failure = failure
        keep = [slot for slot, i in enumerate(self.running) if i not in failed]
        self.running = [self.running[slot] for slot in keep]
        if not self.running:
            return
        index = torch.tensor(keep, device=self.device)
        old_params = list(self.model.parameters())
        old_state = [self.optimizer.state.get(p, {}) for p in old_params]
        lr = self.optimizer.param_groups[0]["lr"]  # the schedule's current stage
        self.model = self.model.select(keep)
        self.optimizer = self._adam(self.model)
        set_lr(self.optimizer, lr)
        for param, state in zip(self.model.parameters(), old_state):
            if state:
                self.optimizer.state[param] = {
                    key: value.index_select(0, index) if value.dim() else value.clone() for key, value in state.items()
                }
        self.batches.select([self.members[i].seed for i in self.running])
        self.noise.select(keep)
        self._refresh_constants()

    # ----- out of the stacks --------------------------------------------------------------------
    def member_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Member i as a plain ``VAE(latent_size=its own)`` state_dict (its last state if it failed)."""
        if i in self._stopped:
            return self._stopped[i][0]
        return self.model.member_state_dict(self.running.index(i))

    def member_optimizer_state_dict(self, i: int) -> dict[str, Any]:
        """Member i's Adam state as a plain Adam over ``VAE.parameters()`` would hold it."""
        if i in self._stopped:
            return self._stopped[i][1]
        slot = self.running.index(i)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for number, (name, param) in enumerate(self.model.named_member_parameters()):
            stacked = self.optimizer.state.get(param)
            if stacked:
                state[number] = {
                    key: self.model.member_slice(name, value, slot) if value.dim() else value.clone()
                    for key, value in stacked.items()
                }
        solo = self.model.member_model(slot)
        groups = self._adam(solo).state_dict()["param_groups"]
        for group in groups:
            group["lr"] = self.optimizer.param_groups[0]["lr"]  # the schedule's current stage
        return {"state": state, "param_groups": groups}

    def member_shuffle_state(self, i: int) -> torch.Tensor:
        """The shuffle generator state member i's solo run would have now (the shuffle state of its solo loop)."""
        return self.batches.shuffle_state(self.members[i].seed)

    def member_training_state(self, i: int) -> dict[str, Any]:
        """Where member i's loop stands, shaped as the solo loop's checkpoint ``training`` block.

        With its weights, Adam state and RNG states this is all a loop needs to continue member i
        from step :attr:`step`, alone or in a group.
        """
        order = self.batches.order_of(self.members[i].seed)
        epoch, rows = self.batches.epoch(self.step), len(self.results[i].rows)
        return self.position.checkpoint_block(self.settings.steps, epoch, len(self.train_images), order, rows)

    def member_binarize_state(self, i: int) -> dict[str, torch.Tensor]:
        """``{"binarize": state}`` of member i's batch binarizer (data.binarize=dynamic), else {}."""
        binarizer = self.binarizers[i]
        return {} if binarizer is None else {"binarize": binarizer.get_state()}

    def member_noise_state(self, i: int) -> torch.Tensor | None:
        """Member i's noise generator state: the global CPU RNG state its solo run would have now."""
        if i not in self.running:
            return None
        return self.noise.generators[self.running.index(i)].get_state()

    # ----- back in ------------------------------------------------------------------------------
    def restore(self, i: int, payload: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        """Continue member i from a checkpoint in the solo format (``checkpoint.load``) and its kept metrics rows.

        Weights, Adam moments, batch order, shuffle and noise generators and the loop's position
        go back into its slot; the padded latent dims stay exactly zero. Every member of a group
        continues from the same step, so a group is restored whole before :meth:`run`.
        """
        training, rng = payload["training"], payload["rng"]
        position, step = Position.from_checkpoint(training, len(self.train_images)), int(payload["step"])
        if self._restored and step != self.step:
            raise ValueError(f"member {i} continues from step {step}, its group from step {self.step}")
        slot = self.running.index(i)
        with torch.no_grad():
            for name, param in self.model.named_member_parameters():
                param[slot].copy_(self.model.member_unslice(name, payload["model"][name].to(self.device), slot))
        self._restore_adam(slot, payload["optimizer"]["state"])
        self.batches.restore(self.members[i].seed, rng["shuffle"], training["order"])
        self.noise.generators[slot].set_state(rng["torch"])
        if self.binarizers[i] is not None:
            self.binarizers[i].set_state(rng["binarize"])
        set_lr(self.optimizer, payload["optimizer"]["param_groups"][0]["lr"])  # the lr schedule's stage
        if self.members[i].objective is not None:  # a FactorVAE's discriminator and its Adam
            self.members[i].objective.load_state_dict(payload.get("objective") or {})
        self.results[i].rows = list(rows)
        self.position = position  # the same for every member of the group: its rows are its own
        self._restored.add(i)

    def _restore_adam(self, slot: int, saved: dict[int, dict[str, torch.Tensor]]) -> None:
        """A plain Adam state (by parameter number) into the stacked Adam, at ``slot``; zero moments elsewhere."""
        fused = bool(self.optimizer.defaults.get("fused") or self.optimizer.defaults.get("capturable"))
        for number, (name, param) in enumerate(self.model.named_member_parameters()):
            values = saved.get(number)
            if not values:
                continue
            state = self.optimizer.state[param]
            for key, value in values.items():
                if value.dim() == 0:  # Adam's step count, one for the whole stack (every member is at the same step)
                    state[key] = value.to(torch.float32).to(param.device if fused else "cpu")
                    continue
                if key not in state:
                    state[key] = torch.zeros_like(param)
                state[key][slot].copy_(self.model.member_unslice(name, value.to(param.device), slot))

    def check_restored(self) -> None:
        """Refuse to train a group in which some members continue from a step and others do not."""
        if self._restored and not set(self.running) <= self._restored:
            missing = sorted(set(self.running) - self._restored)
            raise ValueError(f"members {missing} were not restored to step {self.step} with the rest of their group")
