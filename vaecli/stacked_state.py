"""A stacked member's state out of the stacks and back in: the solo loop's checkpoint format both ways.

Taking member i out gives what `vae train` saves (a plain VAE's state_dict, a plain Adam state,
its noise and shuffle generator states, the loop's position), so its checkpoint.pt is an
ordinary one. :meth:`MemberStates.restore` puts such a checkpoint back into member i's slot, so
a stopped (or killed) batched member continues exactly where it was, alone or in a group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from vaecli.errors import RunError
from vaecli.schedules import set_lr
from vaecli.train import make_optimizer

if TYPE_CHECKING:
    from vaecli.data import DynamicBinarizer
    from vaecli.stacked import GroupSettings, Member, MemberResult
    from vaecli.stacked_model import StackedVAE
    from vaecli.stacked_streams import NoiseStreams, StackedBatches


class MemberStates:
    """Mixed into :class:`vaecli.stacked.StackedTrainer`: the members' states in the solo loop's format."""

    members: list[Member]
    settings: GroupSettings
    device: torch.device
    model: StackedVAE
    optimizer: torch.optim.Optimizer
    train_images: torch.Tensor
    batches: StackedBatches
    noise: NoiseStreams
    running: list[int]
    results: list[MemberResult]
    step: int
    seconds: float
    eval_seconds: float
    last_log_step: int
    last_log_seconds: float
    binarizers: list[DynamicBinarizer | None]
    _stopped: dict[int, tuple[dict[str, torch.Tensor], dict[str, Any]]]
    _restored: set[int]

    def _adam(self, model: torch.nn.Module) -> torch.optim.Adam:
        """The solo loop's Adam (fused where the device has it) with the group's settings."""
        return make_optimizer(model, self.settings.lr, self.device, self.settings.betas, self.settings.eps)

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
        """The shuffle generator state member i's solo run would have now (train.TrainResult.shuffle_state)."""
        return self.batches.shuffle_state(self.members[i].seed)

    def member_training_state(self, i: int) -> dict[str, Any]:
        """Where member i's loop stands, shaped as the solo loop's checkpoint ``training`` block.

        With its weights, Adam state and RNG states this is all a loop needs to continue member i
        from step :attr:`step`, alone or in a group.
        """
        seed = self.members[i].seed
        order = self.batches.order_of(seed)
        position = {
            "step": self.step,
            "seconds": self.seconds,
            "eval_seconds": self.eval_seconds,
            "last_log_step": self.last_log_step,
            "last_log_seconds": self.last_log_seconds,
            "rows": len(self.results[i].rows),
        }
        return {
            "position": position,
            "total_steps": self.settings.steps,
            "epoch": self.batches.epoch(self.step),
            "images": len(self.train_images),
            "order": None if order is None else order.to(torch.int32),
        }

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
        position, step = training["position"], int(payload["step"])
        if training["images"] != len(self.train_images):
            raise RunError(
                f"the checkpoint trained on {training['images']} images, the data gives {len(self.train_images)}"
            )
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
        self.results[i].rows = list(rows)
        self.step, self.seconds, self.eval_seconds = step, position["seconds"], position["eval_seconds"]
        self.last_log_step, self.last_log_seconds = position["last_log_step"], position["last_log_seconds"]
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
