"""Deliberate Practice, Algorithm 1 of the paper (ICML 2025, §3): the pool grows when learning stalls.

    D_0 <- N plain images (omega = 0: the learner is untrained)            _Run.generate_round(0)
    for `iterations` optimiser steps (WSD: warm-up, stable, cool-down):      _Run.loop
        one step on a minibatch drawn uniformly from the pool D_k            Trainer.train_steps
        every tau steps: a <- val accuracy of the EMA learner                _Run.evaluate
            T <- 0 if a is a new best, else T + 1                            decide
            if T >= T_max,k, warm-up is over, cool-down has not begun and |D_k| < max_images:
                D_{k+1} <- D_k + P images guided by the current EMA learner  _Run.generate_round(k+1)
                T <- 0

The EMA weights are evaluated AND guide generation: the learner that decides a round is needed is
the one whose entropy the new images raise. The real test set is only reported, never decides.
The static baseline is the same loop with every image up front: `practice.per_round: 0`.
Branch-outs (SPEC §2.2): before each addition the run is forked; after the main run each fork
finishes training on its frozen pool, giving one more (pool size, accuracy) point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from deliberate import accounting, distributed, faults
from deliberate.config import field, to_dict
from deliberate.data.imagefolder import DataSettings, evaluate_ood, load_split
from deliberate.data.pool import Pool, atomic_file
from deliberate.errors import DeliberateError
from deliberate.generate import SamplerSettings, generate_into_pool, plan
from deliberate.generators.base import to_uint8
from deliberate.generators.latent import KINDS, LatentSettings, load_backend
from deliberate.guidance import GuidanceSettings, guided_sampler_kwargs, learner_fingerprint
from deliberate.learner import ARCHS, build_learner, evaluate, to_float01
from deliberate.rundir import RunDir
from deliberate.sampling import SCHEDULERS, SampleOutput, sample
from deliberate.selection import score_stored, select_top_entropy
from deliberate.training import TrainConfig, Trainer, cpu_rng, uniform_sampler

ROUND_STRIDE = 10_000_000  # image seed = seed * 1e9 + round * ROUND_STRIDE + index (generate.plan)
MAX_ROUNDS = 99
# Compute so far, logged in every metrics row: see deliberate.accounting for each key.
LEDGER = (*accounting.COUNTS, *accounting.SECONDS)


@dataclass
class GeneratorSettings:
    """Which generator, and how it samples (everything but label, seed and guidance)."""

    kind: str = field("pixel", "pixel, stable_diffusion or dit", choices=KINDS)
    path: str | None = field(None, "folder or hub id; null = the shipped Fashion-MNIST model")
    latent: LatentSettings = field(LatentSettings(), "prompt, dtype, checkpointing (latent kinds)")
    sampler: SamplerSettings = field(
        SamplerSettings(), "steps, CFG λ (paper Eq. 5), eta, scheduler"
    )
    batch_size: int = field(250, "images per sampling batch (and pool shard)", ge=1)


@dataclass
class LearnerSettings:
    """The classifier and its recipe (training.TrainConfig's fields; SPEC §2.2)."""

    arch: str = field("small_resnet", "classifier architecture", choices=ARCHS)
    input_size: int = field(
        0, "side the backbone sees (differentiable resize); 0 = native", ge=0, le=1024
    )
    iterations: int = field(TrainConfig.iterations, "optimiser steps in all: the budget", ge=1)
    batch_size: int = field(TrainConfig.batch_size, "images per optimiser step", ge=1)
    lr: float = field(TrainConfig.lr, "peak learning rate (WSD schedule)", gt=0)
    weight_decay: float = field(TrainConfig.weight_decay, "AdamW weight decay", ge=0)
    betas: tuple[float, float] = field(TrainConfig.betas, "AdamW (beta1, beta2)")
    warmup_frac: float = field(TrainConfig.warmup_frac, "linear warm-up share", ge=0, le=1)
    cooldown_frac: float = field(TrainConfig.cooldown_frac, "cosine cool-down share", ge=0, le=1)
    ema_decay: float = field(TrainConfig.ema_decay, "weight-EMA decay", ge=0, le=1)
    label_smoothing: float = field(TrainConfig.label_smoothing, "label smoothing", ge=0, le=1)
    mixup_alpha: float = field(TrainConfig.mixup_alpha, "Mixup alpha; 0 = off", ge=0)
    cutmix_alpha: float = field(TrainConfig.cutmix_alpha, "CutMix alpha; 0 = off", ge=0)
    augment: bool = field(TrainConfig.augment, "random crop (pad 2) and horizontal flip")
    budgets: list[int] = field(
        [],
        "shorter iteration budgets, each cooled down from this run's stable phase (one WSD "
        "branch per budget, docs/experiments.md); warm-up is warmup_frac of the shortest",
    )

    @property
    def warmup_steps(self) -> int | None:
        """With budget branches, the warm-up they all share: warmup_frac of the shortest."""
        if not self.budgets:
            return None
        return round(self.warmup_frac * min(self.iterations, *self.budgets))

    def train_config(self, eval_every: int, seed: int, iterations: int | None = None) -> TrainConfig:
        """The TrainConfig of this recipe (validates it); `iterations`: a budget branch's."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del own["arch"], own["input_size"], own["budgets"]
        if iterations is not None:
            own["iterations"] = iterations
        try:
            return TrainConfig(**own, eval_every=eval_every, seed=seed,
                               warmup_steps=self.warmup_steps)  # fmt: skip
        except DeliberateError as e:  # name the config key the user wrote, not the class
            key = str(e).removeprefix("TrainConfig.")
            where = "practice." if key.startswith("eval_every") else "learner."
            raise DeliberateError(where + key) from None


@dataclass
class LoopSettings:
    """Algorithm 1's knobs: pool sizes, patience, evaluation interval, branch-outs."""

    initial: int = field(1000, "N: plain (omega = 0) images generated before training", ge=1)
    per_round: int = field(500, "P: guided images per round; 0 = static baseline (no rounds)", ge=0)
    max_images: int = field(3000, "image budget: the pool never grows past it", ge=1)
    patience: int = field(2, "T_max,0: evaluations without a new best val accuracy", ge=1)
    patience_mode: str = field(
        "incremental",
        "fixed: T_max,k = T_max,0; incremental: T_max,k = ceil(T_max,0 * |D_k| / N) (SPEC §2.3)",
        choices=("fixed", "incremental"),
    )
    eval_every: int = field(100, "tau: optimiser steps between evaluations", ge=1)
    test_every: int = field(1, "test-set eval every k-th evaluation (+ the last); 0 = last", ge=0)
    new_data_weight: float = field(1.0, "sampling weight of the newest round (Table 3: 2)", gt=0)
    oversample: float = field(
        1.0,
        "R: rounds k >= 1 sample R x P candidates and keep the P highest-entropy per class for "
        "the current learner (Fig. 5's one-learner prune protocol; 1 = keep all)",
        ge=1,
    )
    branch_outs: bool = field(False, "fork before each addition; finish forks without new data")
    prefixes: list[int] = field(
        [],
        "static runs only: also train a fresh learner on the first n images of D_0 for each n "
        "(the n-image static pool: the seed plan is prefix-stable), each with the budgets",
    )


@dataclass
class PracticeConfig:
    """One Deliberate Practice run (or, with per_round 0, its static baseline)."""

    generator: GeneratorSettings = field(GeneratorSettings(), "generator and sampler")
    guidance: GuidanceSettings = field(GuidanceSettings(), "entropy guidance of rounds k >= 1")
    learner: LearnerSettings = field(LearnerSettings(), "classifier and training recipe")
    practice: LoopSettings = field(LoopSettings(), "Algorithm 1: N, P, patience, tau, budgets")
    seed: int = field(0, "seeds image noise, learner init and batch order", ge=0, le=2**31 - 1)
    threads: int = field(0, "torch CPU threads; 0 = torch's default", ge=0)
    device: str = field("cpu", "torch device of generator and learner", choices=("cpu", "cuda"))
    data_dir: str | None = field(None, "Fashion-MNIST idx folder; null = the default lookup")
    data: DataSettings = field(DataSettings(), "real val/test data: fashion_mnist or imagefolder")

    def validate(self) -> None:
        p = self.practice
        self.generator.sampler.validate()
        self.guidance.validate()
        if (share := self.learner.warmup_frac + self.learner.cooldown_frac) > 1:
            raise DeliberateError(
                f"learner.warmup_frac + learner.cooldown_frac = {share:g} exceeds 1; lower one"
            )
        if self.learner.arch == "vit_b_16" and self.learner.input_size % 16:
            raise DeliberateError(
                f"learner.input_size={self.learner.input_size} must be a multiple of vit_b_16's "
                "16-pixel patches (or 0: 224)"
            )
        self.learner.train_config(p.eval_every, self.seed)
        for b in self.learner.budgets:
            if not 1 <= b < self.learner.iterations:
                raise DeliberateError(
                    f"learner.budgets: {b} must be in [1, learner.iterations={self.learner.iterations})"
                )
            self.learner.train_config(p.eval_every, self.seed, iterations=b)
        if self.learner.budgets and p.branch_outs:
            raise DeliberateError(
                "learner.budgets and practice.branch_outs cannot be combined; set one of them"
            )
        if p.prefixes and p.per_round:
            raise DeliberateError(
                "practice.prefixes is for static runs (per_round: 0); remove it or set per_round=0"
            )
        if bad := [n for n in p.prefixes if not 1 <= n < p.initial]:
            raise DeliberateError(
                f"practice.prefixes {bad}: each must be in [1, practice.initial={p.initial})"
            )
        if self.generator.sampler.scheduler not in SCHEDULERS:
            raise DeliberateError(f"generator.sampler.scheduler must be one of {list(SCHEDULERS)}")
        if p.max_images < p.initial:
            raise DeliberateError(
                f"practice.max_images={p.max_images} is below initial={p.initial}"
            )
        rounds = -(-(p.max_images - p.initial) // p.per_round) if p.per_round else 0
        biggest = max(p.initial, round(p.oversample * p.per_round))  # seeds of one round
        if biggest >= ROUND_STRIDE or rounds > MAX_ROUNDS:
            raise DeliberateError(f"practice: at most {MAX_ROUNDS} rounds of < 1e7 images each")


def patience_limit(p: LoopSettings, pool_size: int) -> int:
    """T_max,k: fixed, or grown with the pool so each image gets as many views per plateau."""
    if p.patience_mode == "fixed":
        return p.patience
    return -(-p.patience * pool_size // p.initial)  # ceil(T_max,0 * |D_k| / N), in integers


@dataclass
class LoopState:
    """What a resumed run needs besides the trainer; plain numbers, so it is checkpointable."""

    round: int = -1  # last round wholly in the pool; -1 before D_0 exists
    pending: bool = True  # round `round + 1` was decided (and checkpointed) but is not complete
    pool_size: int = 0
    best_val: float = -1.0
    patience: int = 0  # T: evaluations since the last new best
    evals: int = 0  # metrics rows this state accounts for
    last_entropy: float | None = None  # mean learner entropy of the last round at generation
    forks: list = dataclasses.field(default_factory=list)  # [round, iteration, pool size] each
    ledger: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(LEDGER, 0))
    losses: list = dataclasses.field(default_factory=list)  # train losses since the last eval


def decide(cfg: PracticeConfig, state: LoopState, val_acc: float, step: int) -> bool:
    """Update patience T with one evaluation; True when round k + 1 must be generated now."""
    p = cfg.practice
    if val_acc > state.best_val:
        state.best_val, state.patience = val_acc, 0
    else:
        state.patience += 1
    tc = cfg.learner.train_config(p.eval_every, cfg.seed)  # the schedule's boundaries, once
    allowed = p.per_round > 0 and state.pool_size < p.max_images
    allowed = allowed and tc.warmup_end <= step < tc.cooldown_start
    return allowed and state.patience >= patience_limit(p, state.pool_size)


class _Run:
    """The main run or one branch: trainer, loop state, pool view and their run folder."""

    def __init__(self, cfg, backend, split, pool, rd, progress, callback, *, limit=None,
                 tag="train", iterations=None):  # fmt: skip
        self.cfg, self.backend, self.split, self.pool, self.rd = cfg, backend, split, pool, rd
        self.progress, self.callback = progress, callback
        self.limit, self.tag = limit, tag  # a branch trains on the first `limit` images only
        c, size, _ = backend.image_shape
        lrn = cfg.learner
        with cpu_rng(cfg.seed):  # the initial weights depend on the seed only
            net = build_learner(
                lrn.arch, backend.num_classes, c, size, input_size=lrn.input_size or None
            )
        tc = lrn.train_config(cfg.practice.eval_every, cfg.seed, iterations)  # a budget's
        # Budget branches fork where their cool-down starts (only the full-length run forks).
        shorter = [] if iterations else lrn.budgets
        self.budget_forks = {
            lrn.train_config(cfg.practice.eval_every, cfg.seed, b).cooldown_start: b for b in shorter
        }
        self.trainer, self.state, self.sampler = Trainer(net.to(cfg.device), tc), LoopState(), None

    def restore(self, ckpt: dict | None) -> None:
        """Continue from a checkpoint (None: from scratch); drop metrics rows written after it."""
        if ckpt is not None:
            self.trainer.load_state_dict(ckpt["trainer"])
            self.state = LoopState(**ckpt["loop"])
            torch.set_rng_state(ckpt["rng"])
        if distributed.is_main():
            self.rd.truncate_metrics(self.state.evals)

    def checkpoint(self, path: Path | None = None, state: LoopState | None = None) -> None:
        if not distributed.is_main():  # every rank holds the same state; one writes it
            return
        loop = asdict(state or self.state)
        ckpt = {"trainer": self.trainer.state_dict(), "loop": loop, "rng": torch.get_rng_state()}
        self.rd.save_checkpoint(ckpt, path)

    def notify(self, event: str, info: dict) -> None:
        if self.callback is not None:
            self.callback(event, info)  # tests raise here to simulate a crash

    def generate_round(self, k: int) -> None:
        """Add round k: N plain images for k = 0, else P images guided by the EMA learner."""
        cfg, st, backend = self.cfg, self.state, self.backend
        s, p = cfg.generator.sampler, cfg.practice
        n = p.initial if k == 0 else min(p.per_round, p.max_images - st.pool_size)
        params = self.trainer.model.state_dict().values()  # model, EMA, 2 Adam moments + temp
        ckpt_bytes = 5 * sum(t.numel() * t.element_size() for t in params)
        need = n * (int(np.prod(backend.image_shape)) + 1024) + ckpt_bytes
        faults.ensure_free_space(self.rd.root, need, f"round {k} ({n} images + checkpoint)")
        classes = range(backend.num_classes)
        m = round(p.oversample * n) if k else n  # candidates; the n best are kept (Fig. 5)
        pairs = plan(classes, -(-m // len(classes)), cfg.seed, k * ROUND_STRIDE)[:m]
        learner = self.trainer.ema  # the evaluated weights decide AND guide (module docstring)
        hook, steps = guided_sampler_kwargs(backend, learner if k else None, cfg.guidance, s.steps)
        hook = hook and accounting.TimedHook(hook, st.ledger)
        extra = {"round": k, "omega": cfg.guidance.omega if hook else 0.0}
        if k:
            extra["fingerprint"] = learner_fingerprint(learner)

        def sample_fn(labels, seeds):
            faults.point("generate.batch")
            faults.raise_if_stopped()  # every earlier batch is in the pool: nothing to save
            self.notify("sample", {"round": k, "seeds": seeds})
            if hook:
                hook.skipped_per_row = None
            out = sample(backend, labels, seeds, **asdict(s), guidance=hook, guided_steps=steps)
            if not torch.isfinite(out.images).all():
                raise DeliberateError(
                    f"the generator produced NaN/inf pixels for seeds {seeds[0]}..; nothing of "
                    "this batch was written: check generator.path and its weights"
                )
            if k:  # entropy (and, for Fig. 6, the prediction) on the image exactly as stored
                out.extras.update(score_stored(learner, out.images, cfg.device))
                skips = hook.skipped_per_row if hook else None  # kept per image: resume-safe
                out.extras["guidance_skipped"] = torch.zeros(len(seeds)) if skips is None else skips
            faults.point("generate.sampled")
            return out

        t0 = time.perf_counter()
        if m > n:  # oversample, then keep the n highest-entropy candidates (same seeds if m = n)
            pairs, sample_fn = self.select_candidates(k, pairs, n, sample_fn)
            extra["oversample"] = p.oversample
        generate_into_pool(
            backend,
            self.pool,
            pairs,
            s,
            batch_size=cfg.generator.batch_size,
            extra=extra,
            sample_fn=sample_fn,
            progress=self.progress,
        )
        faults.point("round.generated")
        led = st.ledger  # counted from the request, so a resumed round adds up the same
        led["denoiser_evals"] += m * (s.steps * (2 if s.cfg else 1) + len(steps))
        led["guidance_backward"] += m * len(steps)
        led["seconds_generate"] += time.perf_counter() - t0
        accounting.add(led, images_generated=m, learner_score_images=m if k else 0,
                       images_discarded=m - n)  # fmt: skip
        if hook is not None and distributed.is_main():
            self.save_twins(k, learner)
        st.round, st.pending, st.pool_size, st.patience = k, False, len(self.pool), 0
        mine = [r for r in self.pool.records() if r["round"] == k]
        led["guidance_skipped"] += int(sum(r.get("guidance_skipped", 0) for r in mine))
        entropies = [r.get("entropy") for r in mine]
        st.last_entropy = float(np.mean(entropies)) if k else None
        self.checkpoint()
        self.sampler = None

    def select_candidates(self, k: int, candidates: list, n: int, sample_fn):
        """Sample every candidate of round k, keep the n highest-entropy per class.

        Returns the kept (label, seed) pairs and a sample_fn that hands back their images, so
        the pool is written the usual way. Nothing is written before the selection is made: an
        interrupted round samples its candidates again (same seeds, same learner, same choice).
        The candidates are held in memory as uint8 until the choice: fine for laptop-scale
        rounds; at ImageNet scale use `deliberate prune`, which stores them in a pool.
        """
        if distributed.world_size() > 1:
            raise DeliberateError(
                "practice.oversample > 1 runs in one process only; drop torchrun or set it to 1"
            )
        size = self.cfg.generator.batch_size
        images, scores, labels = [], [], []
        batches = [candidates[i : i + size] for i in range(0, len(candidates), size)]
        desc = f"round {k} candidates (R={self.cfg.practice.oversample:g})"
        for chunk in tqdm(batches, desc=desc, unit="batch", disable=not self.progress):
            out = sample_fn(torch.tensor([y for y, _ in chunk]), [s for _, s in chunk])
            images.append(to_uint8(out.images.cpu()))
            scores.append(out.extras)
            labels += [y for y, _ in chunk]
        images = torch.cat(images)
        extras = {key: torch.cat([e[key] for e in scores]) for key in scores[0]}
        chosen = select_top_entropy(extras["entropy"].numpy(), np.array(labels), n,
                                    self.backend.num_classes)  # fmt: skip
        kept = {  # seed -> (uint8 image, its extras)
            candidates[i][1]: (images[i], {key: v[i] for key, v in extras.items()}) for i in chosen
        }

        def replay(labels, seeds):  # the chosen candidates, exactly as sampled and scored
            rows = [kept[s] for s in seeds]
            out = SampleOutput(to_float01(torch.stack([im for im, _ in rows])))
            out.extras = {key: torch.stack([e[key] for _, e in rows]) for key in extras}
            return out

        return [candidates[i] for i in chosen], replay

    def save_twins(self, k: int, learner) -> None:
        """Round k's first guided images per class and their plain (omega = 0) twins: same seeds,
        both scored by the learner that guided the round. `twins/round-k.npz`; kept on resume.
        10 per class for 10 classes, fewer for more (1 each at 1,000): about 100-1,000 images."""
        per_class = max(1, min(10, 200 // self.backend.num_classes))
        path = self.rd.root / "twins" / f"round-{k}.npz"
        if path.exists():
            return
        mine = [r for r in self.pool.records() if r["round"] == k]
        by_class = [[r for r in mine if r["label"] == c] for c in range(self.backend.num_classes)]
        rows = [r for rows in by_class for r in rows[:per_class]]
        guided, labels = self.pool.get([r["id"] for r in rows])
        s = self.cfg.generator.sampler  # its fields are exactly sample()'s keyword arguments
        out = sample(self.backend, torch.as_tensor(labels), [r["seed"] for r in rows], **asdict(s))
        plain = to_uint8(out.images.cpu())
        with torch.no_grad():
            h_plain = learner.entropy(to_float01(plain).to(self.cfg.device)).cpu().numpy()
        path.parent.mkdir(exist_ok=True)
        with atomic_file(path) as f:
            np.savez(f, plain=plain.numpy(), guided=guided, labels=labels,
                     seeds=np.array([r["seed"] for r in rows]), entropy_plain=h_plain,
                     entropy_guided=np.array([r["entropy"] for r in rows]))  # fmt: skip

    def make_sampler(self):
        """Minibatches from the pool (its first `limit` images in a branch), read from disk."""
        images = self.pool.images_view(self.limit)  # memory-mapped: the pool never sits in RAM
        n = len(images)
        labels = self.pool.labels()[:n]
        rounds = np.array([r["round"] for r in self.pool.records()])[:n]
        w = self.cfg.practice.new_data_weight
        if w == 1 or rounds.max() == 0:
            return uniform_sampler(images, labels)
        weights = torch.where(torch.as_tensor(rounds == rounds.max()), w, 1.0).double()
        labels_t = torch.as_tensor(labels)

        def weighted(generator, batch_size, part):  # Table 3's "non-uni.": newest round up-weighted
            idx = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
            idx = idx[part]  # this rank's rows of the global batch
            return torch.as_tensor(images[idx.numpy()]), labels_t[idx]

        return weighted

    def evaluate(self, losses: list[float]) -> dict:
        """Evaluate the EMA learner on real val (decides) and test (reported) images."""
        t0, st, tr, p = time.perf_counter(), self.state, self.trainer, self.cfg.practice
        step = tr.step_count
        val = _accuracy(tr.ema, self.split.val_images, self.split.val_labels)
        last = step >= tr.cfg.iterations
        test = None
        if last or (p.test_every and (st.evals + 1) % p.test_every == 0):
            test = _accuracy(tr.ema, self.split.test_images, self.split.test_labels)
        st.ledger["seconds_eval"] += time.perf_counter() - t0
        n_test = 0 if test is None else len(self.split.test_labels)
        accounting.add(st.ledger, learner_eval_images=len(self.split.val_labels) + n_test)
        return {
            "iteration": step,
            "pool_size": st.pool_size,
            "round": st.round,
            "val_acc": val,
            "test_acc": test,
            "train_loss": distributed.mean(float(np.mean(losses))),  # over the ranks' shares
            "lr": tr.lr,
            "phase": tr.cfg.phase(step),
            "entropy_last_round": st.last_entropy,
            "learner_images": step * tr.cfg.batch_size,
        }

    def loop(self, grow: bool) -> None:
        """Algorithm 1 from wherever the state stands, until the iterations budget is spent."""
        cfg, st, tr = self.cfg, self.state, self.trainer
        total, tau = tr.cfg.iterations, cfg.practice.eval_every
        bar = tqdm(total=total, initial=tr.step_count, desc=self.tag, disable=not self.progress)
        while True:
            if st.pending and grow:  # decided and checkpointed: generate (or finish) the round
                self.generate_round(st.round + 1)
            if tr.step_count >= total:
                break
            self.sampler = self.sampler or self.make_sampler()
            t0 = time.perf_counter()
            for _ in range(min(tau - len(st.losses), total - tr.step_count)):
                st.losses += tr.train_steps(self.sampler, 1)
                bar.update(1)
                if tr.step_count in self.budget_forks:
                    self.fork_budget(self.budget_forks[tr.step_count])
                faults.point("train.step")
                if faults.stop_requested():  # the window's losses are in the checkpoint
                    self.checkpoint()
                    faults.raise_if_stopped()
            st.ledger["seconds_train"] += time.perf_counter() - t0
            row = self.evaluate(st.losses)
            st.losses = []
            faults.point("eval.done")
            add = decide(cfg, st, row["val_acc"], tr.step_count) and grow
            row.update(
                best_val=st.best_val,
                patience=st.patience,
                adds_round=add,
                patience_limit=patience_limit(cfg.practice, st.pool_size),
                **st.ledger,
            )
            if distributed.is_main():
                self.rd.append_metrics(row)
            st.evals += 1
            bar.set_postfix(pool=st.pool_size, val=f"{row['val_acc']:.3f}", T=st.patience)
            faults.point("metrics.appended")
            self.notify("eval", {**row, "run": self.tag})
            if add:
                st.pending = True
                faults.point("round.decided")
                if cfg.practice.branch_outs:
                    self.fork()
            self.checkpoint()  # before generating: a crash mid-round resumes with this learner
        bar.close()
        distributed.barrier()  # rank 0's last metrics row is on disk before anyone reads it

    def fork_budget(self, iterations: int) -> None:
        """Save the state a shorter budget's cool-down starts from: its WSD branch.

        Up to here the schedules agree (same warm-up, constant lr), so the branch, trained on the
        pool as it is now, equals a separate run with `learner.iterations: iterations`.
        """
        folder = self.rd.root / "budgets" / f"iters-{iterations}"
        fork = folder / "fork.pt"
        if fork.exists() or (folder / "checkpoint.pt").exists():  # a resumed run passes again
            return
        if distributed.is_main():
            folder.mkdir(parents=True, exist_ok=True)
        branch = dataclasses.replace(self.state, evals=0, forks=[], losses=list(self.state.losses))
        self.checkpoint(fork, branch)
        faults.point("budget.forked")

    def fork(self) -> None:
        """Save a branch-out: this exact state, set to finish training on the current pool."""
        st = self.state
        st.forks.append([st.round, self.trainer.step_count, st.pool_size])
        branch = dataclasses.replace(st, pending=False, evals=0, forks=[])
        folder = self.rd.root / "branches" / f"round-{st.round}"
        if distributed.is_main():
            folder.mkdir(parents=True, exist_ok=True)
        self.checkpoint(folder / "fork.pt", branch)
        faults.point("fork.saved")


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _write_result(rd: RunDir, result: dict) -> dict:
    if distributed.is_main():
        with atomic_file(rd.root / "result.json") as f:
            f.write(json.dumps(result).encode())
    return result


def _finish_budget(main: _Run, iterations: int) -> dict:
    """Cool one budget branch down from its fork to `iterations`; resumable, then cached."""
    rd = RunDir(main.rd.root / "budgets" / f"iters-{iterations}")
    if (rd.root / "result.json").exists():
        return json.loads((rd.root / "result.json").read_text())
    ckpt = rd.load_checkpoint() or rd.load_checkpoint(rd.root / "fork.pt")
    if ckpt is None:
        raise DeliberateError(f"{rd.root}: its fork.pt is missing; delete the folder and re-run")
    size = ckpt["loop"]["pool_size"]
    run = _Run(main.cfg, main.backend, main.split, main.pool, rd, main.progress, main.callback,
               limit=size, tag=f"{main.tag} {iterations} it", iterations=iterations)  # fmt: skip
    run.restore(ckpt)
    run.loop(grow=False)
    last = rd.metrics()[-1]
    return _write_result(rd, {"iterations": iterations, "pool_size": size,
                              "val_acc": last["val_acc"], "test_acc": last["test_acc"]})  # fmt: skip


def _budget_results(run: _Run) -> list[dict]:
    """Every budget of `run`, shortest first, its own full-length result included."""
    last = run.rd.metrics()[-1]
    own = {"iterations": last["iteration"], "pool_size": run.state.pool_size,
           "val_acc": last["val_acc"], "test_acc": last["test_acc"]}  # fmt: skip
    return [*(_finish_budget(run, b) for b in sorted(run.cfg.learner.budgets)), own]


def _finish_prefix(main: _Run, n: int) -> dict:
    """A fresh static learner on D_0's first n images (= the n-image pool), with its budgets."""
    rd = RunDir(main.rd.root / "prefixes" / f"n-{n}")
    if (rd.root / "result.json").exists():
        return json.loads((rd.root / "result.json").read_text())
    if distributed.is_main():
        rd.root.mkdir(parents=True, exist_ok=True)
    run = _Run(main.cfg, main.backend, main.split, main.pool, rd, main.progress, main.callback,
               limit=n, tag=f"static {n}")  # fmt: skip
    ckpt = rd.load_checkpoint()
    if ckpt is None:  # its pool is there already: the generation it stands for is a prefix's
        share = n / main.state.pool_size
        led = {k: v * share for k, v in main.state.ledger.items()
               if k in ("denoiser_evals", "images_generated", "seconds_generate")}  # fmt: skip
        run.state = LoopState(round=0, pending=False, pool_size=n,
                              ledger={**dict.fromkeys(LEDGER, 0), **led})  # fmt: skip
    run.restore(ckpt)
    run.loop(grow=False)
    budgets = _budget_results(run)
    return _write_result(rd, {**budgets[-1], "budgets": budgets})


def _finish_branch(main: _Run, k: int, iteration: int, size: int) -> dict:
    """Train one fork to the end of the schedule on its frozen pool; resumable, then cached."""
    rd = RunDir(main.rd.root / "branches" / f"round-{k}")
    result_file = rd.root / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    run = _Run(main.cfg, main.backend, main.split, main.pool, rd, main.progress, main.callback,
               limit=size, tag=f"branch {k}")  # fmt: skip
    run.restore(rd.load_checkpoint() or rd.load_checkpoint(rd.root / "fork.pt"))
    faults.point("branch.started")
    run.loop(grow=False)
    faults.point("branch.finished")
    last = rd.metrics()[-1]
    result = {
        "round": k,
        "forked_at": iteration,
        "pool_size": size,
        "val_acc": last["val_acc"],
        "test_acc": last["test_acc"],
    }
    if distributed.is_main():
        with atomic_file(result_file) as f:
            f.write(json.dumps(result).encode())
    return result


def run_practice(
    cfg: PracticeConfig, out_dir: str | Path, progress: bool = True, callback=None
) -> dict:
    """Run (or resume) Algorithm 1 in `out_dir`; returns a summary of the final learner.

    `callback(event, info)` is called after each metrics row ("eval", before the checkpoint) and
    before each sampling batch ("sample"); an exception it raises stops the run like a crash.
    """
    cfg.validate()
    if cfg.device == "cuda" and not torch.cuda.is_available():  # at run time: presets load anywhere
        raise DeliberateError("device: cuda, but torch sees no CUDA GPU; set device=cpu")
    distributed.init(cfg.device)  # joins torchrun's group; a no-op in a single process
    progress = progress and distributed.is_main()
    rd = RunDir(out_dir)
    with _threads(cfg.threads), faults.graceful_stop():
        split, classes = load_split(cfg.data, cfg.data_dir)
        backend = load_backend(cfg.generator, device=cfg.device, classes=classes)
        c, h, w = backend.image_shape
        _check_generator_fits(backend, split)  # all checks before the first byte is written
        faults.ensure_free_space(out_dir, cfg.practice.initial * (c * h * w + 1024), "round 0")
        with distributed.main_first():  # rank 0 writes config.yaml; the others check theirs
            rd.claim(to_dict(cfg), clean=distributed.is_main(), defaults=to_dict(type(cfg)()))
        faults.point("run.claimed")
        meta = {
            "class_names": list(backend.class_names),
            "num_classes": backend.num_classes,
            "image_shape": [h, w] if c == 1 else [h, w, c],
            "generator": backend.identifier,
        }
        with distributed.main_first():  # rank 0 creates (or repairs) it, then the others open it
            pool = Pool.open_or_create(rd.root / "pool", meta)  # refuses another generator's pool
        faults.point("pool.created")
        main = _Run(cfg, backend, split, pool, rd, progress, callback)
        main.restore(rd.load_checkpoint())
        if len(pool) < main.state.pool_size:  # the pool drops rows of a deleted last shard
            raise DeliberateError(
                f"{pool.root} holds {len(pool)} images but this run had {main.state.pool_size}: "
                "a shard file was deleted; restore it (shards carry their own manifest rows)"
            )
        main.loop(grow=True)
        branches = [_finish_branch(main, *fork) for fork in main.state.forks]
        budgets = _budget_results(main) if cfg.learner.budgets else []
        prefixes = [_finish_prefix(main, n) for n in sorted(cfg.practice.prefixes)]
        from deliberate.report import write_practice_report

        last = rd.metrics()[-1]
        summary = {
            "pool_size": main.state.pool_size,
            "rounds": main.state.round,
            "iterations": last["iteration"],
            "val_acc": last["val_acc"],
            "test_acc": last["test_acc"],
            "branches": branches,
            **({"budgets": budgets} if budgets else {}),
            **({"prefixes": prefixes} if prefixes else {}),
            **{k: last[k] for k in main.state.ledger},
        }
        if distributed.is_main():
            if cfg.data.kind == "imagefolder" and cfg.data.imagefolder.ood:
                ood_file = rd.root / "ood.json"
                summary["ood"] = evaluate_ood(
                    main.trainer.ema, cfg.data.imagefolder, classes, ood_file
                )
            twins = {}
            for path in sorted((rd.root / "twins").glob("round-*.npz")):
                with np.load(path) as z:
                    twins[int(path.stem.split("-")[1])] = dict(z)
            summary["twin_entropy"] = {
                k: [float(t["entropy_plain"].mean()), float(t["entropy_guided"].mean())]
                for k, t in sorted(twins.items())
            }
            from deliberate.summary import finish_summary  # shifted suite, Fig. 6, compute

            ema = main.trainer.ema
            summary = finish_summary(rd.root, cfg, backend, ema, split, pool, summary, progress)
            faults.point("report.started")
            write_practice_report(rd.root, rd.metrics(), pool, summary, twins)
            faults.point("report.written")
        distributed.barrier()  # the report exists when any rank returns
    return summary


def load_run_learner(path: str | Path, backend, device: str = "cpu") -> torch.nn.Module:
    """The EMA learner of a run: a run folder (its latest checkpoint) or a checkpoint in one.

    The architecture comes from the run's config.yaml (found next to the checkpoint or up to two
    folders above it, for branch-outs); the weights load with `torch.load(weights_only=True)`.
    """
    from deliberate.config import load_config

    path = Path(path)
    file = path / "checkpoint.pt" if path.is_dir() else path
    if not file.is_file():
        raise DeliberateError(f"--learner {path}: no checkpoint.pt there; give a run folder")
    config = next((d / "config.yaml" for d in file.parents[:3] if (d / "config.yaml").exists()), None)
    if config is None:
        raise DeliberateError(f"--learner {path}: no config.yaml beside or above the checkpoint")
    lrn = load_config(PracticeConfig, config).learner
    ckpt = RunDir(file.parent).load_checkpoint(file)
    c, size, _ = backend.image_shape
    net = build_learner(lrn.arch, backend.num_classes, c, size, input_size=lrn.input_size or None)
    try:
        net.load_state_dict(ckpt["trainer"]["ema"])
    except (KeyError, RuntimeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise DeliberateError(
            f"--learner {path} does not fit this generator's {backend.num_classes} classes "
            f"and {c}x{size}x{size} images ({first[:120]})"
        ) from None
    return net.to(device).eval()


def _accuracy(learner, images, labels) -> float:
    """Top-1 accuracy; under torchrun each rank scores a block and the exact counts are summed.

    Every rank thus gets the same number, so patience decisions agree without a broadcast.
    """
    part = distributed.block(len(labels))
    n = part.stop - part.start
    correct = round(evaluate(learner, images[part], labels[part]) * n)
    return distributed.all_sum(correct) / max(len(labels), 1)


def _check_generator_fits(backend, split) -> None:
    """Refuse a generator whose classes or image shape differ from the real evaluation data."""
    classes = int(split.val_labels.max()) + 1
    arrays = getattr(split.val_images, "ndim", None) == 3  # Fashion-MNIST (ImageFolder streams)
    shape = (1, *split.val_images.shape[1:]) if arrays else None
    if backend.num_classes != classes:
        raise DeliberateError(
            f"the generator has {backend.num_classes} classes but the dataset has {classes}; "
            "set generator.path to a generator trained on this dataset"
        )
    if shape is not None and tuple(backend.image_shape) != shape:
        raise DeliberateError(
            f"the generator makes {tuple(backend.image_shape)} images but the dataset has "
            f"{shape}; set generator.path to a generator trained on this dataset"
        )
