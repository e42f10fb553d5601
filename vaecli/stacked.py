"""Train a group of compatible sweep members as one stacked model, each keeping its solo behaviour.

Members share everything but ``beta``, ``seed`` and ``latent_size`` (see :mod:`vaecli.stacked_groups`).
The loop is the solo loop (vaecli.train) done G times at once: the same fused Adam (over the
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vaecli.data import batch_binarizer
from vaecli.likelihoods import cb_log_normalizer, cb_mean
from vaecli.objective import EVAL_CHUNK, kl_to_standard_normal, summarize
from vaecli.schedules import set_lr
from vaecli.stacked_model import StackedVAE
from vaecli.stacked_state import MemberStates
from vaecli.stacked_streams import NoiseStreams, StackedBatches, solo_start
from vaecli.train import eval_steps, log_steps

EVAL_ROWS = 2048  # images x members per evaluation chunk: temporaries of ~6 MB stay cached and off mmap
TERM_NAMES = ("loss", "reconstruction", "kl", "recon_nats", "kl_nats", "neg_elbo_nats")


@dataclass(frozen=True)
class Member:
    """What may differ between the members of one group."""

    seed: int
    beta: float
    latent_size: int


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
    binarize: str = "none"  # only "dynamic" concerns the loop (a fresh draw of each member's batch)
    fail_at_step: int | None = None  # testing aid, as the solo loop's `+fail_at_step=N`: every member fails there


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
        """The last train and test rows, as train.TrainResult.final has them (missing splits left out)."""
        last: dict[str, dict[str, Any]] = {}
        for row in self.rows:
            last[row["split"]] = row
        return last


RowHook = Callable[[int, dict[str, Any]], None]  # (member index, row)
FailureHook = Callable[[int, Failure], None]
ProgressHook = Callable[[int, int, dict[int, float], float], None]  # (step, steps, loss by member, images/s each)


class StackedTrainer(MemberStates):
    """The members' stacked model, optimizer and random streams; :meth:`run` is the loop.

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
        self.model = StackedVAE([model for model, _ in starts]).to(self.device)
        self.optimizer = self._adam(self.model)
        self.new_lr = dict(settings.lr_changes)
        self.binarizers = [batch_binarizer(settings.binarize, m.seed, self.device) for m in self.members]
        self.train_images, self.test_images = train_images.to(self.device), test_images.to(self.device)
        seeds = [m.seed for m in self.members]
        self.batches = StackedBatches(self.train_images, settings.batch_size, settings.shuffle, seeds)
        self.noise = NoiseStreams([noise for _, noise in starts], self.model.latent_sizes, self.model.latent_size)
        self.running = list(range(len(self.members)))  # member number of each stack slot
        self.results = [MemberResult(member, []) for member in self.members]
        self.step = 0  # steps taken
        self.seconds = self.eval_seconds = 0.0  # since step 0: training wall time (evaluations included), evaluations
        self.last_log_step, self.last_log_seconds = 0, 0.0  # the last train rows, for images_per_s
        self._clock = 0.0  # perf_counter() at step 0
        self._stopped: dict[int, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}
        self._restored: set[int] = set()  # members put back from a checkpoint (:meth:`restore`)
        self._eval_noise = self._make_eval_noise()
        self._refresh_constants()

    def _binarized(self, x: torch.Tensor) -> torch.Tensor:
        """data.binarize=dynamic: each member's batch drawn by its own binarizer, as its solo loop draws it."""
        slots = [self.binarizers[i] for i in self.running]
        if slots[0] is None:
            return x
        return torch.stack([draw(x if x.dim() == 2 else x[slot]) for slot, draw in enumerate(slots)])

    # ----- per-slot constants -------------------------------------------------------------------
    def _refresh_constants(self) -> None:
        """Per-member betas, latent sizes and KL weights for the members still in the stacks."""
        members = [self.members[i] for i in self.running]
        batch, mask = self.batches.batch_size, self.model.latent_mask
        self.betas = torch.tensor([m.beta for m in members], device=self.device)
        self.latent_sizes = torch.tensor([float(m.latent_size) for m in members], device=self.device)
        # d loss / d KL element = beta / (batch * latent size), as backward_beta_elbo; zero on padding
        per_member = torch.tensor([m.beta / (batch * m.latent_size) for m in members], device=self.device)
        self.kl_weight = mask * per_member.view(-1, 1, 1)

    def _make_eval_noise(self) -> torch.Tensor:
        """Each member's evaluation noise, drawn as train.evaluate draws it (its seed, solo chunks)."""
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
        steps = self.settings.steps
        if not self.running:
            return self.results
        logged, evaluated = set(log_steps(steps)), eval_steps(steps, self.settings.eval_every)
        progress_every = max(1, min(16, steps // 100))
        self._clock = time.perf_counter() - self.seconds
        hooks = (on_row, on_failure, on_progress)
        for step in range(self.step + 1, steps + 1):
            check = step in logged or step in evaluated or step % progress_every == 0
            terms = self.train_step(step, check)
            if step == self.settings.fail_at_step:
                failure = Failure(step, f"failing at step {step} as asked by fail_at_step", "RuntimeError")
                self._fail(dict.fromkeys(self.running, failure), on_failure)
            elif check:
                self._record(step, terms, step in logged, step in evaluated, hooks)
            self.seconds = time.perf_counter() - self._clock
            if not self.running or (stop is not None and stop()):
                break
        return self.results

    def _record(self, step: int, terms: dict[int, dict[str, float]], logged: bool, evaluated: bool, hooks) -> None:
        """A check step: failures, its train rows, a test evaluation, the progress hook."""
        on_row, on_failure, on_progress = hooks
        self._fail_non_finite(step, terms, on_failure)
        if not self.running:
            return
        batch, now = self.batches.batch_size, time.perf_counter()
        epoch = round(self.batches.epoch(step), 4)
        if logged:
            since = now - (self._clock + self.last_log_seconds)
            rate = round((step - self.last_log_step) * batch / max(since, 1e-9), 1)
            for i in self.running:
                row = {"step": step, "epoch": epoch, "split": "train", **terms[i]}
                row.update(images_per_s=rate, seconds=round(now - self._clock, 4))
                self._emit(i, row, on_row)
            self.last_log_step, self.last_log_seconds = step, now - self._clock
        if evaluated:
            eval_started = time.perf_counter()
            for i, values in zip(self.running, self.evaluate()):
                row = {"step": step, "epoch": epoch, "split": "test", **values, "images_per_s": ""}
                row["seconds"] = round(time.perf_counter() - self._clock, 4)
                self._emit(i, row, on_row)
            spent = time.perf_counter() - eval_started
            self.eval_seconds += spent
            self.last_log_seconds += spent  # images_per_s counts training time only, as the solo loop
        if on_progress is not None:
            losses = {i: terms[i]["loss"] for i in self.running}
            on_progress(step, self.settings.steps, losses, step * batch / max(now - self._clock, 1e-9))

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
        logits = self.model.decode(loc + scale * noise)
        kl = kl_to_standard_normal(_Normal(loc, scale))
        self.optimizer.zero_grad(set_to_none=True)
        # d/dl of -log p(x|l) is the mean of p minus x (objective.backward_beta_elbo): backprop starts at the logits
        pixel_weight = 1.0 / (self.batches.batch_size * logits.shape[-1])
        mean = cb_mean if self.settings.likelihood == "continuous_bernoulli" else torch.sigmoid
        logits_grad = mean(logits.detach()).sub_(x).mul_(pixel_weight)
        kl_term = (kl * self.kl_weight).sum()
        torch.autograd.backward([logits, kl_term], [logits_grad, torch.ones_like(kl_term)])
        self.optimizer.step()
        self.step = step
        if not check:
            return {}
        with torch.no_grad():
            values = self._terms(logits, x, kl.detach())
        return {i: dict(zip(TERM_NAMES, column)) for i, column in zip(self.running, values)}

    def _terms(self, logits: torch.Tensor, x: torch.Tensor, kl: torch.Tensor) -> list[list[float]]:
        """Per member: loss, reconstruction, kl, recon_nats, kl_nats (batch means, seed units and nats)."""
        batch, pixels = logits.shape[1], logits.shape[2]
        recon_nats = _nll_sums(logits, x, self.settings.likelihood) / batch
        kl_nats = (kl * self.model.latent_mask).sum((1, 2)) / batch
        reconstruction, kl_mean = recon_nats / pixels, kl_nats / self.latent_sizes
        loss = reconstruction + self.betas * kl_mean
        columns = torch.stack([loss, reconstruction, kl_mean, recon_nats, kl_nats], dim=1).tolist()
        for column in columns:
            column.append(column[3] + column[4])  # neg_elbo_nats, summed in Python as batch_metrics does
        return columns

    # ----- evaluation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self) -> list[dict[str, float]]:
        """train.evaluate for every running member (same noise), in slot order."""
        n, groups = len(self.test_images), len(self.running)
        rows = max(1, EVAL_ROWS // groups)
        noise = self._eval_noise.index_select(0, torch.tensor(self.running, device=self.device))
        recon = torch.zeros(groups, dtype=torch.float64, device=self.device)
        kl_sum = torch.zeros_like(recon)
        for start in range(0, n, rows):
            chunk = self.test_images[start : start + rows]
            loc, scale = self.model.encode(chunk)
            logits = self.model.decode(loc + scale * noise[:, start : start + rows])
            recon += _nll_sums(logits, chunk, self.settings.likelihood).double()
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
        failed: dict[int, Failure] = {}
        for slot, i in enumerate(self.running):
            loss = terms[i]["loss"]
            if not math.isfinite(loss):
                failed[i] = Failure(step, f"loss became {loss} at step {step}; try a smaller train.lr")
            elif not finite_weights[slot]:
                failed[i] = Failure(step, f"weights became non-finite at step {step}; try a smaller train.lr")
        if failed:
            self._fail(failed, on_failure)

    def fail_broken_weights(self, on_failure: FailureHook | None = None) -> None:
        """Before a checkpoint between check steps: members whose weights became non-finite fail now.

        As the solo loop, which never writes a checkpoint of weights its divergence watch saw break.
        """
        message = f"weights became non-finite at step {self.step}; try a smaller train.lr"
        finite = self._finite_weights()
        broken = [i for slot, i in enumerate(self.running) if not finite[slot]]
        if broken:
            self._fail({i: Failure(self.step, message) for i in broken}, on_failure)

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


@dataclass
class _Normal:
    """Just what kl_to_standard_normal reads, without building a torch Normal in the hot loop."""

    loc: torch.Tensor
    scale: torch.Tensor


def _nll_sums(logits: torch.Tensor, x: torch.Tensor, likelihood: str = "bernoulli") -> torch.Tensor:
    """Per member: -log p(x|l) summed over batch and pixels (objective.nll_sum): the sigmoid
    cross-entropy, less the continuous Bernoulli's log-normaliser for that likelihood."""
    shared = x.dim() == 2  # one batch for all members: one matrix-vector product
    cross = torch.matmul(logits.flatten(1), x.reshape(-1)) if shared else (logits * x).flatten(1).sum(1)
    nll = torch.nn.functional.softplus(logits).flatten(1).sum(1) - cross
    if likelihood == "continuous_bernoulli":
        nll = nll - cb_log_normalizer(logits).flatten(1).sum(1)
    return nll
