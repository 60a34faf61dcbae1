"""Training the learner: the paper's recipe (App. D.5.1) as a resumable, seeded step loop.

AdamW with a Warmup-Stable-Decay schedule, label smoothing, optional Mixup / CutMix, and a weight
EMA. The EMA weights are the ones to evaluate and to guide with; `train_classifier` returns them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from deliberate import distributed
from deliberate.augment import random_crop_flip, random_resized_crop_flip
from deliberate.config import check_fields, field
from deliberate.errors import DeliberateError
from deliberate.learner import ARCHS, Learner, build_learner, evaluate, to_float01

Batch = tuple[torch.Tensor, torch.Tensor]
Sampler = Callable[[torch.Generator, int, slice], Batch]  # (rng, global batch size, my rows)


@dataclass
class Recipe:
    """The learner's training recipe (SPEC §2.2; App. D.5.1): one set of fields and bounds,
    read from YAML as `learner:` (`LearnerSettings`) and used by the trainer (`TrainConfig`)."""

    _where: ClassVar[str] = ""  # how errors name the fields: "learner." or "TrainConfig."
    iterations: int = field(2000, "optimiser steps in all, warm-up and cool-down included", ge=1)
    batch_size: int = field(128, "images per optimiser step, drawn uniformly from the pool", ge=1)
    lr: float = field(2e-3, "peak learning rate of the WSD schedule", gt=0)
    weight_decay: float = field(0.05, "AdamW decoupled weight decay", ge=0)
    betas: tuple[float, float] = field((0.9, 0.999), "AdamW (beta1, beta2), each in [0, 1)")
    warmup_frac: float = field(0.1, "share of iterations in linear warm-up", ge=0, le=1)
    cooldown_frac: float = field(0.2, "share of iterations in the cosine cool-down to 0", ge=0,
                                 le=1)  # fmt: skip
    ema_decay: float = field(
        0.999, 'weight-EMA decay (paper: "momentum 0.001"); warmed up as min(d, (1+n)/(10+n))',
        ge=0, lt=1,
    )  # fmt: skip
    label_smoothing: float = field(0.11, "label smoothing of the targets", ge=0, lt=1)
    mixup_alpha: float = field(0.0, "Mixup Beta(a, a); 0 = off (paper: 0.5)", ge=0)
    cutmix_alpha: float = field(0.0, "CutMix Beta(a, a); 0 = off (paper: 1.0)", ge=0)
    augment: bool = field(False, "random crop (`crop`) and horizontal flip, per image")
    crop: str = field(
        "pad", "augment's crop: pad (zero padding 2, small images) or resized "
        "(RandomResizedCrop, scale 0.08-1, ratio 3/4-4/3: the ViT recipe)",
        choices=("pad", "resized"),
    )  # fmt: skip
    precision: str = field(
        "fp32", "learner forward/backward: fp32, or bf16 autocast with fp32 master weights",
        choices=("fp32", "bf16"),
    )  # fmt: skip

    def validate(self) -> None:
        """The cross-field checks (`config.from_dict` has checked each field's own range)."""
        w = self._where
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise DeliberateError(f"{w}betas = {list(self.betas)} must be two values in [0, 1)")
        if (share := self.warmup_frac + self.cooldown_frac) > 1:
            raise DeliberateError(
                f"{w}warmup_frac + {w}cooldown_frac = {share:g} exceeds 1; lower one"
            )


@dataclass
class TrainConfig(Recipe):
    """Hyperparameters of one learner training run: the recipe plus how this run uses it."""

    _where: ClassVar[str] = "TrainConfig."
    eval_every: int = field(500, "steps between evaluations in `train_classifier`", ge=1)
    seed: int = field(0, "seeds the initial weights, batch sampling and per-step randomness",
                      ge=0)  # fmt: skip
    warmup_steps: int | None = field(
        None, "warm-up length in steps; None = round(warmup_frac * iterations). Budget branches "
        "of one run share the warm-up of the shortest, so their stable phases are one trajectory",
        ge=0,
    )  # fmt: skip

    def __post_init__(self):
        self.betas = tuple(self.betas)  # YAML gives lists
        check_fields(self, self._where)

    def validate(self) -> None:
        super().validate()
        if self.warmup_steps is not None and self.warmup_steps > self.cooldown_start:
            raise DeliberateError(
                f"TrainConfig.warmup_steps = {self.warmup_steps} is past the cool-down start "
                f"({self.cooldown_start})"
            )

    @property
    def warmup_end(self) -> int:
        """First step after the linear warm-up."""
        return wsd_phases(self.iterations, self.warmup_frac, self.cooldown_frac,
                          self.warmup_steps)[0]  # fmt: skip

    @property
    def cooldown_start(self) -> int:
        """First step of the cosine cool-down; DP adds no data from here on."""
        return wsd_phases(self.iterations, self.warmup_frac, self.cooldown_frac)[1]

    def phase(self, step: int) -> str:
        """warmup, stable or cooldown: the schedule's phase at 0-based `step`."""
        if step >= self.cooldown_start:
            return "cooldown"
        return "warmup" if step < self.warmup_end else "stable"

    def lr_factor(self, step: int) -> float:
        """The WSD multiplier of the peak learning rate for the update at `step`."""
        return wsd_lr(step, self.iterations, 1.0, self.warmup_frac, self.cooldown_frac,
                      warmup=self.warmup_end)  # fmt: skip


@dataclass
class LearnerSettings(Recipe):
    """The `learner:` section of a run: the architecture and the recipe (SPEC §2.2)."""

    _where: ClassVar[str] = "learner."
    arch: str = field("small_resnet", "classifier architecture", choices=ARCHS)
    input_size: int = field(
        0, "side the backbone sees (differentiable resize); 0 = native", ge=0, le=1024
    )
    budgets: list[int] = field(
        [],
        "shorter iteration budgets, each cooled down from this run's stable phase (one WSD "
        "branch per budget, docs/experiments.md); warm-up is warmup_frac of the shortest",
    )
    loader: str = field(
        "inline", "inline: batches drawn in the training process from the trainer's RNG; "
        "workers: a DataLoader whose batches depend on (seed, step) only (deliberate.loader)",
        choices=("inline", "workers"),
    )  # fmt: skip
    workers: int = field(0, "DataLoader worker processes with loader: workers (0: in process)",
                         ge=0, le=256)  # fmt: skip

    def validate(self) -> None:
        super().validate()
        for b in self.budgets:
            if not 1 <= b < self.iterations:
                raise DeliberateError(
                    f"learner.budgets: {b} must be in [1, learner.iterations={self.iterations})"
                )
        if self.arch == "vit_b_16" and self.input_size % 16:
            raise DeliberateError(
                f"learner.input_size={self.input_size} must be a multiple of vit_b_16's "
                "16-pixel patches (or 0: 224)"
            )

    def train_config(self, eval_every: int, seed: int, iterations: int | None = None) -> TrainConfig:
        """The TrainConfig of this recipe; `iterations`: a budget branch's (shared warm-up)."""
        recipe = {f.name: getattr(self, f.name) for f in dataclasses.fields(Recipe)}
        if iterations is not None:
            recipe["iterations"] = iterations
        warmup = None
        if self.budgets:  # the warm-up every budget branch shares: warmup_frac of the shortest
            warmup = round(self.warmup_frac * min(self.iterations, *self.budgets))
        return TrainConfig(**recipe, eval_every=eval_every, seed=seed, warmup_steps=warmup)


def wsd_phases(total: int, warmup_frac: float, cooldown_frac: float,
               warmup: int | None = None) -> tuple[int, int]:  # fmt: skip
    """(end of warm-up, start of cool-down) in steps: the one place the boundaries are computed
    (the lr schedule, the logged phase and DP's "no rounds in cool-down" rule all use them)."""
    return (round(warmup_frac * total) if warmup is None else warmup,
            total - round(cooldown_frac * total))  # fmt: skip


def wsd_lr(
    step: int,
    total: int,
    peak: float,
    warmup_frac: float = 0.1,
    cooldown_frac: float = 0.2,
    warmup: int | None = None,
) -> float:
    """Warmup-Stable-Decay learning rate for the update at 0-based `step` (Hu et al. 2024).

    Linear warm-up to `peak` over the first `warmup_frac` of `total` steps (ending at peak, so no
    update has lr 0), flat, then a cosine from `peak` to exactly 0 at `step == total`.
    """
    warmup, decay_start = wsd_phases(total, warmup_frac, cooldown_frac, warmup)
    if step < warmup:
        return peak * (step + 1) / warmup
    if step < decay_start:
        return peak
    progress = min(1.0, (step - decay_start) / max(total - decay_start, 1))
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


@contextlib.contextmanager
def cpu_rng(seed: int) -> Iterator[None]:
    """Run a block with the global CPU RNG seeded to `seed`, restoring it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def uniform_sampler(images: np.ndarray | torch.Tensor, labels) -> Sampler:
    """A sampler drawing `batch_size` examples uniformly with replacement from fixed arrays.

    Numpy arrays (memmaps included) and lazy views such as `Pool.images_view()` are indexed per
    batch, so they are never loaded whole.
    """
    labels_t = torch.as_tensor(np.asarray(labels)).long()
    if len(images) != len(labels_t) or len(images) == 0:
        raise DeliberateError(
            f"need as many labels as images (>0); got {len(images)}, {len(labels_t)}"
        )

    def sample(generator: torch.Generator, batch_size: int, part: slice = slice(None)) -> Batch:
        idx = torch.randint(len(images), (batch_size,), generator=generator)[part]
        batch = images[idx] if isinstance(images, torch.Tensor) else images[idx.numpy()]
        return torch.as_tensor(batch), labels_t[idx]

    return sample


def newest_round_weights(rounds: np.ndarray, new_data_weight: float) -> torch.Tensor | None:
    """Per-image sampling weights with the newest round up-weighted; None when uniform."""
    if new_data_weight == 1 or not len(rounds) or rounds.max() == 0:
        return None
    newest = torch.as_tensor(rounds == rounds.max())
    return torch.where(newest, new_data_weight, 1.0).double()


def pool_sampler(images, labels, rounds: np.ndarray, new_data_weight: float = 1.0) -> Sampler:
    """Minibatches from a pool: uniform, or with its newest round up-weighted (Table 3's
    "non-uni."); `images` may be a memory-mapped view, read per batch."""
    weights = newest_round_weights(rounds, new_data_weight)
    if weights is None:
        return uniform_sampler(images, labels)
    labels_t = torch.as_tensor(labels)

    def weighted(generator, batch_size, part):
        idx = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
        idx = idx[part]  # this rank's rows of the global batch
        return torch.as_tensor(images[idx.numpy()]), labels_t[idx]

    return weighted


class Trainer:
    """Owns the learner, its EMA copy, AdamW, the WSD schedule, the step counter and the RNG.

    `model` holds the live weights being optimised; evaluate and guide with `ema`. Under torchrun
    each rank trains on its even share of the global batch `cfg.batch_size` through DDP.
    """

    def __init__(self, learner: Learner, cfg: TrainConfig):
        self.cfg = cfg
        self.model = learner
        # A manual EMA over the whole state_dict, so BatchNorm statistics are averaged too.
        self.ema = copy.deepcopy(learner).eval().requires_grad_(False)
        self.ddp = distributed.wrap(learner)  # the model itself in a single process
        self.part = distributed.batch_part(cfg.batch_size)  # this rank's rows of each batch
        self.optimizer = torch.optim.AdamW(
            learner.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: cfg.lr_factor(s),  # a plain function: not saved in the state_dict
        )
        self.step_count = 0
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.mix = None
        if cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0:
            from torchvision.transforms import v2  # seconds to import: only when mixing

            mixes = [
                cls(alpha=alpha, num_classes=learner.num_classes)
                for cls, alpha in ((v2.MixUp, cfg.mixup_alpha), (v2.CutMix, cfg.cutmix_alpha))
                if alpha > 0
            ]
            # As in torchvision's reference recipe: one of the enabled mixes per batch.
            self.mix = v2.RandomChoice(mixes)

    @property
    def lr(self) -> float:
        """The learning rate the next step will use."""
        return self.optimizer.param_groups[0]["lr"]

    @property
    def in_cooldown(self) -> bool:
        """Whether the schedule has entered its final decay (DP adds no data from then on)."""
        return self.step_count >= self.cfg.cooldown_start

    def step(self, images, labels) -> float:
        """One optimiser step on uint8 (B, H, W[, C]) or float (B, C, H, W) images; returns loss."""
        device = next(self.model.parameters()).device
        x = to_float01(images).to(device)  # (B, C, H, W)
        y = torch.as_tensor(labels).long().to(device)  # (B,)
        # A per-step seed from the saved generator makes crops, mixes and dropout resumable.
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        self.model.train()
        with cpu_rng(seed):
            if self.cfg.augment:
                shared = distributed.world_size() > 1  # x is this rank's share of the batch
                crop = random_resized_crop_flip if self.cfg.crop == "resized" else random_crop_flip
                x = crop(x, part=(self.cfg.batch_size, self.part) if shared else None)
            target = y
            if self.mix is not None:
                x, target = self.mix(x, y)  # target: (B, num_classes) soft labels
            # bf16: autocast on the learner's device; weights, AdamW and the EMA stay fp32.
            with torch.autocast(device.type, torch.bfloat16, enabled=self.cfg.precision == "bf16"):
                logits = self.ddp(x)
            loss = F.cross_entropy(logits.float(), target,
                                   label_smoothing=self.cfg.label_smoothing)  # fmt: skip
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        self._update_ema()
        return loss.item()  # under torchrun: the loss on this rank's share of the batch

    def train_steps(self, sampler: Sampler, n: int) -> list[float]:
        """Take `n` steps on batches from `sampler(self.generator, batch_size, part)`; losses."""
        return [
            self.step(*sampler(self.generator, self.cfg.batch_size, self.part)) for _ in range(n)
        ]

    @torch.no_grad()
    def _update_ema(self) -> None:
        # The decay warm-up keeps early EMA weights from being dominated by the random init.
        n = self.step_count
        decay = min(self.cfg.ema_decay, (1 + n) / (10 + n))
        for ema_t, t in zip(
            self.ema.state_dict().values(), self.model.state_dict().values(), strict=True
        ):
            if ema_t.is_floating_point():
                ema_t.lerp_(t, 1.0 - decay)
            else:
                ema_t.copy_(t)  # BatchNorm's num_batches_tracked

    def state_dict(self) -> dict:
        """Tensors and plain numbers only (loadable with torch.load(weights_only=True)).

        Like nn.Module.state_dict, the tensors are live references: save or clone them.
        """
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step_count,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`; further steps then match an uninterrupted run bit for bit."""
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])  # before the scheduler: it owns the lr
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_count = int(state["step"])
        self.generator.set_state(state["generator"])


def train_classifier(
    images,
    labels,
    cfg: TrainConfig,
    eval_sets: dict[str, tuple] | None = None,
    progress: bool = True,
    *,
    arch: str = "small_resnet",
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Learner, list[dict]]:
    """Train a fresh learner on uint8 images (N, H, W[, C]); returns (EMA learner, history).

    History rows: step, loss (mean since the last row), lr, time_s, and acc_<name> per eval set,
    measured with the EMA weights every `cfg.eval_every` steps and at the end.
    """
    shape = tuple(np.shape(images))
    if len(shape) not in (3, 4):
        raise DeliberateError(f"train_classifier: images must be (N,H,W[,C]); got {shape}")
    num_classes = num_classes or int(np.max(labels)) + 1
    with cpu_rng(cfg.seed):
        learner = build_learner(arch, num_classes, shape[3] if len(shape) == 4 else 1, shape[1])
    trainer = Trainer(learner.to(device), cfg)
    sampler = uniform_sampler(images, labels)
    history, start = [], time.perf_counter()
    with tqdm(total=cfg.iterations, desc="train", disable=not progress) as bar:
        while trainer.step_count < cfg.iterations:
            n = min(cfg.eval_every, cfg.iterations - trainer.step_count)
            losses = trainer.train_steps(sampler, n)
            row = {"step": trainer.step_count, "loss": float(np.mean(losses)), "lr": trainer.lr}
            for name, (eval_images, eval_labels) in (eval_sets or {}).items():
                row[f"acc_{name}"] = evaluate(trainer.ema, eval_images, eval_labels)
            row["time_s"] = time.perf_counter() - start
            history.append(row)
            bar.update(n)
            bar.set_postfix({k: round(v, 4) for k, v in row.items() if k != "step"})
    return trainer.ema, history
