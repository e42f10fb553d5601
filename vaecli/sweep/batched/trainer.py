"""Train a group of compatible sweep members as one stacked model, each keeping its solo behaviour.

Members share everything but ``beta``, ``seed``, ``latent_size`` and their objective's settings (see
:mod:`vaecli.sweep.batched.groups`). The plain beta-ELBO runs as one stacked computation; any other
objective (or beta with warm-up or free bits) runs each member's own objective on its slice.
The loop is the solo loop (vaecli.run.loop) done G times at once: the same fused Adam (over the
stacks), the same backprop from the analytic logit gradient sigmoid(l) - x, the same metrics
schedule, each member's own batch order and noise. Every member gets its own metrics rows, shaped
like the solo loop's, and can be taken out as a plain VAE with a plain Adam state.

Equivalence: a group of one matches the solo loop to float rounding (bmm and mm sum in other
orders). A member's numbers do not depend on the other members' values, seeds or count, only on
the group's padded latent size and on whether the stack holds one member or more (torch's bmm
takes another kernel for a batch of one); tests pin this bit for bit.

A member whose loss or weights become non-finite (checked at the solo loop's check steps) is
recorded as failed and removed from the stacks. Nothing in the stacked step mixes members, so the
others carry on bit for bit as they would have with it healthy, while two or more remain.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vaecli.models.likelihoods import logit_gradient, nll_sum
from vaecli.objectives.beta import EVAL_CHUNK, kl_to_standard_normal, summarize
from vaecli.objectives.terms import terms_row
from vaecli.run.bookkeeping import (
    DivergenceWatch,
    RowClock,
    Schedule,
    broken_forward,
    diverged,
    first_non_finite,
    loss_diverged,
    weights_diverged,
)
from vaecli.run.schedules import set_lr
from vaecli.sweep.batched.state import Failure, GroupSettings, Member, MemberResult, StackedState

__all__ = ["Failure", "GroupSettings", "Member", "MemberResult", "StackedTrainer"]

EVAL_ROWS = 2048  # images x members per evaluation chunk: temporaries of ~6 MB stay cached and off mmap


RowHook = Callable[[int, dict[str, Any]], None]  # (member index, row)
FailureHook = Callable[[int, Failure], None]
ProgressHook = Callable[[int, int, dict[int, float], float], None]  # (step, steps, loss by member, images/s each)


class StackedTrainer(StackedState):
    """The loop over a group's stacks (:class:`StackedState`): :meth:`run` steps every member at once."""

    def __init__(self, *args: Any, **kwargs: Any):
        """As :class:`StackedState` (members, settings, train and test images, device), plus the loop's schedule."""
        super().__init__(*args, **kwargs)
        self.new_lr = dict(self.settings.lr_changes)
        self.schedule = Schedule(self.settings.steps, self.settings.eval_every)
        self._eval_noise = self._make_eval_noise()
        # each member's divergence watch, as its solo loop's: read only at check steps and before checkpoints
        self.watch = DivergenceWatch(self.device, members=len(self.members))

    @property
    def seconds(self) -> float:
        return self.position.seconds

    @property
    def eval_seconds(self) -> float:
        return self.position.eval_seconds

    def _binarized(self, x: torch.Tensor) -> torch.Tensor:
        """data.binarize=dynamic: each member's batch drawn by its own binarizer, as its solo loop draws it."""
        slots = [self.binarizers[i] for i in self.running]
        if slots[0] is None:
            return x
        return torch.stack([draw(x if x.dim() == 2 else x[slot]) for slot, draw in enumerate(slots)])

    def _make_eval_noise(self) -> torch.Tensor:
        """Each member's evaluation noise, drawn as objectives.beta.evaluate draws it (its seed, solo chunks)."""
        n, padded = len(self.test_images), self.model.latent_size
        noise = torch.zeros(len(self.members), n, padded)
        for i, member in enumerate(self.members):
            generator = torch.Generator().manual_seed(member.seed)
            for start in range(0, n, EVAL_CHUNK):
                size = min(EVAL_CHUNK, n - start)
                draw = torch.randn(size, member.latent_size, generator=generator)
                noise[i, start : start + size, : member.latent_size] = draw
        return noise.to(self.device)

    # ----- the loop -----------------------------------------------------------------------------
    def run(
        self,
        on_row: RowHook | None = None,
        on_failure: FailureHook | None = None,
        on_progress: ProgressHook | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> list[MemberResult]:
        """Train every member for ``settings.steps`` steps, until all have failed, or until ``stop()``.

        ``stop`` is asked after every step (its rows written): a stopped group can continue later
        from :meth:`member_training_state`, as the solo loop continues from its checkpoint, and a
        group whose members were put back (:meth:`restore`) continues from their step.
        """
        self.check_restored()
        steps, schedule = self.settings.steps, self.schedule
        if not self.running:
            return self.results
        self.clock = RowClock(self.position)  # here, not before: a restore puts the checkpoint's position in
        hooks = (on_row, on_failure, on_progress)
        for step in range(self.step + 1, steps + 1):
            check = schedule.checks(step)
            terms = self.train_step(step, check)
            if check:
                self._record(step, terms, hooks)
            self.clock.tick()
            if not self.running or (stop is not None and stop()):
                break
        return self.results

    def _record(self, step: int, terms: dict[int, dict[str, float]], hooks) -> None:
        """A check step: failures, its train rows, a test evaluation, the progress hook."""
        on_row, on_failure, on_progress = hooks
        self._fail_non_finite(step, terms, on_failure)
        if not self.running:
            return
        batch, now, clock = self.batches.batch_size, time.perf_counter(), self.clock
        epoch = round(self.batches.epoch(step), 4)
        if step in self.schedule.logged:
            timing = clock.train_row(step, batch, now)
            for i in self.running:
                self._emit(i, {"step": step, "epoch": epoch, "split": "train", **terms[i], **timing}, on_row)
        if step in self.schedule.evaluated:
            with clock.evaluation():
                evaluated = dict(zip(self.running, self.evaluate()))
                self._fail_non_finite_test_rows(step, evaluated, on_failure)
                for i in self.running:
                    row = {"step": step, "epoch": epoch, "split": "test", **evaluated[i]}
                    self._emit(i, {**row, **clock.test_row()}, on_row)
        if on_progress is not None:
            losses = {i: terms[i]["loss"] for i in self.running}
            on_progress(step, self.settings.steps, losses, clock.rate(step, batch, now))

    def _emit(self, member: int, row: dict[str, Any], on_row: RowHook | None) -> None:
        self.results[member].rows.append(row)
        if on_row is not None:
            on_row(member, row)

    def train_step(self, step: int, check: bool = False) -> dict[int, dict[str, float]]:
        """One Adam step for every running member; with ``check``, their batch terms by member index."""
        if step in self.new_lr:
            set_lr(self.optimizer, self.new_lr[step])
        x = self._binarized(self.batches.batch(step))
        loc, scale = self.model.encode(x)
        noise = self.noise.draw(self.batches.batch_size, self.device)
        z = loc + scale * noise
        logits = self.model.decode(z)
        kl = kl_to_standard_normal(_Normal(loc, scale))
        self.optimizer.zero_grad(set_to_none=True)
        # backprop starts at the logits, as the solo loop's (objectives.beta.backward_beta_elbo)
        pixels = x.shape[-1]  # sub-pixels (a discretised logistic gives two outputs each)
        pixel_weight = 1.0 / (self.batches.batch_size * pixels)
        logits_grad = logit_gradient(logits, x, self.settings.likelihood, pixel_weight)
        if self.with_objectives:  # each member's objective on its own slice of the stacks
            parts = torch.stack([part for part, _ in self._objective_parts(step, loc, scale, z, kl, pixels)])
            kl_term, member_kl = parts.sum(), parts.detach() * (self.batches.batch_size * pixels)
        else:
            weighted_kl = kl * self.kl_weight
            kl_term, member_kl = weighted_kl.sum(), weighted_kl.detach().sum((1, 2))
        torch.autograd.backward([logits, kl_term], [logits_grad, torch.ones_like(kl_term)])
        self.optimizer.step()
        if self.with_objectives:
            for slot, i in enumerate(self.running):  # FactorVAE's discriminator steps on its member's codes
                self.members[i].objective.after_backward(z[slot, :, : self.members[i].latent_size], step)
        self.watch.observe_totals(step, logits.detach().sum((1, 2)).add_(member_kl))
        self.position.step = step
        if not check:
            return {}
        with torch.no_grad():
            values = self._terms(logits, x, kl.detach())
            if self.with_objectives:
                return self._objective_rows(step, values, loc, scale, z, kl.detach(), pixels)
        return {i: terms_row(column) for i, column in zip(self.running, values)}

    def _objective_parts(
        self, step: int, loc: torch.Tensor, scale: torch.Tensor, z: torch.Tensor, kl: torch.Tensor, pixels: int
    ) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """Each running member's loss but its reconstruction (seed units) and own terms, from its slice."""
        parts = []
        for slot, i in enumerate(self.running):
            size, objective = self.members[i].latent_size, self.members[i].objective
            q = _Normal(loc[slot, :, :size], scale[slot, :, :size])
            parts.append(objective.loss_part(q, z[slot, :, :size], kl[slot, :, :size], step, pixels))
        return parts

    def _objective_rows(self, step: int, values: list[list[float]], *stacks: Any) -> dict[int, dict[str, float]]:
        """Batch rows of members trained through their objectives: the loss is the objective's, plus its terms."""
        rows = {}
        for (part, extra), column, i in zip(self._objective_parts(step, *stacks), values, self.running):
            column = [column[1] + float(part), *column[1:]]
            rows[i] = {**terms_row(column), **{name: float(value) for name, value in extra.items()}}
        return rows

    def _broken_forward(self) -> dict[int, Failure]:
        """Members whose forward pass gave NaN or inf, named as the solo loop names them: by the update before it."""
        firsts = self.watch.firsts()
        return {
            self.running[slot]: Failure(self.step, broken_forward(first)) for slot, first in enumerate(firsts) if first
        }

    def drop(self, failed: dict[int, Failure]) -> None:
        keep = [slot for slot, i in enumerate(self.running) if i not in failed]
        super().drop(failed)
        self.watch.select(keep)

    def _terms(self, logits: torch.Tensor, x: torch.Tensor, kl: torch.Tensor) -> list[list[float]]:
        """Per member: loss, reconstruction, kl, recon_nats, kl_nats (batch means, seed units and nats)."""
        batch, pixels = logits.shape[1], x.shape[-1]
        recon_nats = nll_sum(logits, x, self.settings.likelihood, stacked=True) / batch
        kl_nats = (kl * self.model.latent_mask).sum((1, 2)) / batch
        reconstruction, kl_mean = recon_nats / pixels, kl_nats / self.latent_sizes
        loss = reconstruction + self.betas * kl_mean
        return torch.stack([loss, reconstruction, kl_mean, recon_nats, kl_nats], dim=1).tolist()

    # ----- evaluation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self) -> list[dict[str, float]]:
        """objectives.beta.evaluate for every running member (same noise), in slot order; members
        trained through another objective get its own test row, on their model taken out of the stacks."""
        if self.with_objectives:
            rows = []
            for slot, i in enumerate(self.running):
                member, model = self.members[i], self.model.member_model(slot)
                rows.append(member.objective.evaluate(model, self.test_images, member.seed, self.step))
            return rows
        return self._evaluate_beta()

    def _evaluate_beta(self) -> list[dict[str, float]]:
        n, groups = len(self.test_images), len(self.running)
        rows = max(1, EVAL_ROWS // groups)
        noise = self._eval_noise.index_select(0, torch.tensor(self.running, device=self.device))
        recon = torch.zeros(groups, dtype=torch.float64, device=self.device)
        kl_sum = torch.zeros_like(recon)
        for start in range(0, n, rows):
            chunk = self.test_images[start : start + rows]
            loc, scale = self.model.encode(chunk)
            logits = self.model.decode(loc + scale * noise[:, start : start + rows])
            recon += nll_sum(logits, chunk, self.settings.likelihood, stacked=True).double()
            kl = kl_to_standard_normal(_Normal(loc, scale)) * self.model.latent_mask
            kl_sum += kl.sum((1, 2)).double()
        pixels = self.test_images.shape[-1]
        out = []
        for slot, i in enumerate(self.running):
            m = self.members[i]
            out.append(summarize(float(recon[slot]) / n, float(kl_sum[slot]) / n, pixels, m.latent_size, m.beta))
        return out

    # ----- failures -----------------------------------------------------------------------------
    def _fail_non_finite(self, step: int, terms: dict[int, dict[str, float]], on_failure: FailureHook | None) -> None:
        finite_weights = self._finite_weights()
        failed: dict[int, Failure] = self._broken_forward()
        for slot, i in enumerate(self.running):
            loss, broken = terms[i]["loss"], first_non_finite(terms[i])
            if i in failed:
                continue
            if not math.isfinite(loss):
                failed[i] = Failure(step, loss_diverged(loss, step))
            elif broken is not None:  # beta=0 keeps the loss finite while the KL is not: no such row is written
                failed[i] = Failure(step, f"{broken} became {terms[i][broken]} at step {step}; try a smaller train.lr")
            elif not finite_weights[slot]:
                failed[i] = Failure(step, weights_diverged(step))
        if failed:
            self._fail(failed, on_failure)

    def _fail_non_finite_test_rows(
        self, step: int, rows: dict[int, dict[str, float]], on_failure: FailureHook | None
    ) -> None:
        """A member whose test evaluation gives NaN or inf fails with the solo loop's words; no such row is written."""
        failed = {}
        for i, row in rows.items():
            broken = first_non_finite(row)
            if broken is not None:
                failed[i] = Failure(step, diverged(step, f"the test evaluation after it gave {broken}={row[broken]}"))
        if failed:
            self._fail(failed, on_failure)

    def fail_broken_weights(self, on_failure: FailureHook | None = None) -> None:
        """Before a checkpoint between check steps: members whose weights became non-finite fail now.

        As the solo loop, which never writes a checkpoint of weights its divergence watch saw break.
        """
        message = weights_diverged(self.step)
        finite = self._finite_weights()
        failed = self._broken_forward()
        failed.update(
            {
                i: Failure(self.step, message)
                for slot, i in enumerate(self.running)
                if not finite[slot] and i not in failed
            }
        )
        if failed:
            self._fail(failed, on_failure)

    def _fail(self, failed: dict[int, Failure], on_failure: FailureHook | None) -> None:
        self.drop(failed)
        if on_failure is not None:
            for i, failure in failed.items():
                on_failure(i, failure)

    def _finite_weights(self) -> list[bool]:
        ok = torch.ones(len(self.running), dtype=torch.bool, device=self.device)
        for param in self.model.parameters():
            ok &= torch.isfinite(param).flatten(1).all(1)
        return ok.tolist()


@dataclass
class _Normal:
    """Just what kl_to_standard_normal reads, without building a torch Normal in the hot loop."""

    loc: torch.Tensor
    scale: torch.Tensor


def stacked_probe(trainer: StackedTrainer) -> Callable[[], None]:
    """The stacked step's arithmetic on a copy of the group's model (nothing of the group touched)."""
    import copy

    model = copy.deepcopy(trainer.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0)
    x = trainer.train_images[: trainer.batches.batch_size]

    with torch.no_grad():
        noise = torch.randn(model.encode(x)[1].shape, generator=torch.Generator().manual_seed(0))

    def step() -> None:
        loc, scale = model.encode(x)
        logits = model.decode(loc + scale * noise.to(scale.device))
        optimizer.zero_grad(set_to_none=True)
        (logits.square().mean() + loc.square().mean() + scale.mean()).backward()
        optimizer.step()

    return step
