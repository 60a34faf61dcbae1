"""Deliberate Practice, Algorithm 1 of the paper (ICML 2025, §3): the pool grows when learning stalls.

    D_0 <- N plain images (omega = 0: the learner is untrained)            Run.generate_round(0)
    for `iterations` optimiser steps (WSD: warm-up, stable, cool-down):      Run.loop
        one step on a minibatch drawn uniformly from the pool D_k            Trainer.train_steps
        every tau steps: a <- val accuracy of the EMA learner                Run.evaluate
            T <- 0 if a is a new best, else T + 1                            decide
            if T >= T_max,k, warm-up is over, cool-down has not begun and |D_k| < max_images:
                D_{k+1} <- D_k + P images guided by the current EMA learner  Run.generate_round(k+1)
                T <- 0

The EMA weights are evaluated AND guide generation: the learner that decides a round is needed is
the one whose entropy the new images raise. The real test set is only reported, never decides.
The static baseline is the same loop with every image up front: `practice.per_round: 0`.
Branch-outs (SPEC §2.2): before each addition the run is forked; after the main run each fork
finishes training on its frozen pool, giving one more (pool size, accuracy) point.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from deliberate import accounting, branches, distributed, faults, rounds
from deliberate.cache import Round0Cache
from deliberate.config import field, to_dict
from deliberate.data import DataSettings, load_classes, load_split
from deliberate.data.codecs import PoolSettings
from deliberate.data.pool import Pool
from deliberate.errors import DeliberateError
from deliberate.generators import GeneratorSettings, check_fits, load_backend, pool_meta
from deliberate.guidance import GuidanceSettings
from deliberate.learner import accuracy, build_learner
from deliberate.rundir import RunDir
from deliberate.summary import loop_summary, summarize_run
from deliberate.training import LearnerSettings, TrainConfig, Trainer, cpu_rng, pool_sampler

# Compute so far, logged in every metrics row: see deliberate.accounting for each key.
LEDGER = (*accounting.COUNTS, *accounting.SECONDS)


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
    checkpoint_every: int = field(
        0, "iterations between checkpoints; 0 = after every evaluation. Always written before "
        "a round is generated, at forks and at the end; a kill replays from the last one", ge=0,
    )  # fmt: skip
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
    pool: PoolSettings = field(PoolSettings(), "how a new pool stores images: raw, png, jpeg, webp")
    cache: str | None = field(
        None, "folder of the shared round-0 cache (deliberate.cache): round 0 is hard-linked "
        "from it when another run made the same one; not compared on resume; null = none",
    )  # fmt: skip

    def validate(self) -> None:
        p, lrn = self.practice, self.learner
        for b in [None, *lrn.budgets]:  # each schedule the run trains with must be valid
            lrn.train_config(p.eval_every, self.seed, iterations=b)
        if lrn.budgets and p.branch_outs:
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
        if p.max_images < p.initial:
            raise DeliberateError(
                f"practice.max_images={p.max_images} is below initial={p.initial}"
            )
        n_rounds = -(-(p.max_images - p.initial) // p.per_round) if p.per_round else 0
        biggest = max(p.initial, round(p.oversample * p.per_round))  # seeds of one round
        if biggest >= rounds.ROUND_STRIDE or n_rounds > rounds.MAX_ROUNDS:
            raise DeliberateError(
                f"practice: at most {rounds.MAX_ROUNDS} rounds of < 1e7 images each"
            )


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

    @classmethod
    def from_checkpoint(cls, loop: dict) -> LoopState:
        """The state a checkpoint's `loop` holds, refused (TypeError) unless every field has the
        type a run writes: fork rounds become folder names, so they must be integers."""
        state = cls(**loop)  # TypeError: a key this state does not have
        num = lambda v: isinstance(v, int | float) and not isinstance(v, bool)  # noqa: E731
        fork = lambda f: isinstance(f, list | tuple) and [type(x) for x in f] == [int] * 3  # noqa: E731
        counts = (state.round, state.pool_size, state.patience, state.evals)
        checks = (
            all(type(v) is int for v in counts),
            type(state.pending) is bool and num(state.best_val),
            state.last_entropy is None or num(state.last_entropy),
            isinstance(state.forks, list) and all(map(fork, state.forks)),
            isinstance(state.ledger, dict) and all(map(num, state.ledger.values())),
            isinstance(state.losses, list) and all(map(num, state.losses)),
        )
        if not all(checks):
            raise TypeError("its loop state has a field of the wrong type")
        return state


def decide(cfg: PracticeConfig, state: LoopState, val_acc: float, step: int,
           schedule: TrainConfig | None = None) -> bool:  # fmt: skip
    """Update patience T with one evaluation; True when round k + 1 must be generated now.

    `schedule` is the run's TrainConfig (its warm-up and cool-down bound when rounds may come).
    """
    p = cfg.practice
    if val_acc > state.best_val:
        state.best_val, state.patience = val_acc, 0
    else:
        state.patience += 1
    tc = schedule or cfg.learner.train_config(p.eval_every, cfg.seed)
    allowed = p.per_round > 0 and state.pool_size < p.max_images
    allowed = allowed and tc.warmup_end <= step < tc.cooldown_start
    return allowed and state.patience >= patience_limit(p, state.pool_size)


class Run:
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
        self.checkpointed_at = 0  # the step of the last checkpoint (practice.checkpoint_every)
        self.sink = None  # a TensorBoardSink (the main run only), fed the metrics rows

    def load(self, ckpt: dict) -> None:
        """Take trainer, loop state and RNG from a checkpoint; writes nothing, so it doubles as
        the structure check of `RunDir.load_checkpoint(check=run.load)` (KeyError, TypeError,
        RuntimeError on a checkpoint that is not this run's)."""
        self.trainer.load_state_dict(ckpt["trainer"])
        self.state = LoopState.from_checkpoint(ckpt["loop"])
        torch.set_rng_state(ckpt["rng"])

    def restore(self, ckpt: dict | None, **fresh) -> None:
        """Continue from a checkpoint, or start from scratch with LoopState(**fresh) (a branch
        whose pool is already complete); drop metrics rows written after the state."""
        if ckpt is not None:
            self.load(ckpt)
            self.checkpointed_at = self.trainer.step_count
        else:
            self.state = LoopState(**fresh)
        if distributed.is_main():
            self.rd.truncate_metrics(self.state.evals)

    def checkpoint(self, path: Path | None = None, state: LoopState | None = None) -> None:
        if not distributed.is_main():  # every rank holds the same state; one writes it
            return
        loop = asdict(state or self.state)
        ckpt = {"trainer": self.trainer.state_dict(), "loop": loop, "rng": torch.get_rng_state()}
        self.rd.save_checkpoint(ckpt, path)
        if path is None:
            self.checkpointed_at = self.trainer.step_count

    def checkpoint_due(self) -> bool:
        """After an evaluation: every time, or once `checkpoint_every` steps have passed, or at
        the end. Between checkpoints a resumed run replays the same steps and evaluations."""
        every, step = self.cfg.practice.checkpoint_every, self.trainer.step_count
        end = step >= self.trainer.cfg.iterations
        return not every or end or step - self.checkpointed_at >= every

    def branch(self, rd: RunDir, **kw) -> Run:
        """A sibling run in `rd` on this run's generator, data and pool (deliberate.branches)."""
        return Run(self.cfg, self.backend, self.split, self.pool, rd, self.progress,
                   self.callback, **kw)  # fmt: skip

    def notify(self, event: str, info: dict) -> None:
        if self.callback is not None:
            self.callback(event, info)  # tests raise here to simulate a crash

    def generate_round(self, k: int) -> None:
        """Add round k (deliberate.rounds): plain for k = 0, else guided by the EMA learner."""
        st, params = self.state, self.trainer.model.state_dict().values()
        entropy = rounds.generate_round(
            self.cfg, self.backend, self.pool, k,
            self.trainer.ema,  # the evaluated weights decide AND guide (module docstring)
            st.ledger, have=st.pool_size, root=self.rd.root,
            checkpoint_bytes=5 * sum(t.numel() * t.element_size() for t in params),  # + moments
            progress=self.progress,
            on_batch=lambda seeds: self.notify("sample", {"round": k, "seeds": seeds}),
        )  # fmt: skip
        st.round, st.pending, st.pool_size, st.patience = k, False, len(self.pool), 0
        st.last_entropy = entropy
        self.checkpoint()
        self.sampler = None

    def make_sampler(self):
        """Minibatches from the pool (its first `limit` images in a branch), read from disk."""
        images = self.pool.images_view(self.limit)  # memory-mapped: the pool never sits in RAM
        n = len(images)
        rounds_ = self.pool.column("round")[:n]
        lrn, tr = self.cfg.learner, self.trainer
        if lrn.loader == "workers":  # batches keyed by (seed, step), read ahead by workers
            from deliberate.loader import LoaderSampler

            return LoaderSampler(
                images, self.pool.labels()[:n], rounds_, self.cfg.practice.new_data_weight,
                seed=self.cfg.seed, batch_size=tr.cfg.batch_size, part=tr.part,
                start=tr.step_count, stop=tr.cfg.iterations, workers=lrn.workers,
                pin_memory=self.cfg.device == "cuda",
            )  # fmt: skip
        return pool_sampler(images, self.pool.labels()[:n], rounds_,
                            self.cfg.practice.new_data_weight)  # fmt: skip

    def evaluate(self, losses: list[float]) -> dict:
        """Evaluate the EMA learner on real val (decides) and test (reported) images."""
        t0, st, tr, p = time.perf_counter(), self.state, self.trainer, self.cfg.practice
        step = tr.step_count
        val = accuracy(tr.ema, self.split.val_images, self.split.val_labels)
        last = step >= tr.cfg.iterations
        test = None
        if last or (p.test_every and (st.evals + 1) % p.test_every == 0):
            test = accuracy(tr.ema, self.split.test_images, self.split.test_labels)
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
                    branches.save_budget_fork(self, self.budget_forks[tr.step_count])
                faults.point("train.step")
                if faults.stop_requested():  # the window's losses are in the checkpoint
                    self.checkpoint()
                    faults.raise_if_stopped()
            st.ledger["seconds_train"] += time.perf_counter() - t0
            row = self.evaluate(st.losses)
            st.losses = []
            faults.point("eval.done")
            add = decide(cfg, st, row["val_acc"], tr.step_count, tr.cfg) and grow
            row.update(
                best_val=st.best_val,
                patience=st.patience,
                adds_round=add,
                patience_limit=patience_limit(cfg.practice, st.pool_size),
                **st.ledger,
            )
            if distributed.is_main():
                self.rd.append_metrics(row)
                if self.sink is not None:
                    self.sink.add(row, self.tag)
            st.evals += 1
            bar.set_postfix(pool=st.pool_size, val=f"{row['val_acc']:.3f}", T=st.patience)
            faults.point("metrics.appended")
            self.notify("eval", {**row, "run": self.tag})
            if add:
                st.pending = True
                faults.point("round.decided")
                if cfg.practice.branch_outs:
                    branches.save_branch_out(self)
            if add or self.checkpoint_due():  # a round always: it resumes with this learner
                self.checkpoint()
        bar.close()
        distributed.barrier()  # rank 0's last metrics row is on disk before anyone reads it

def run_practice(
    cfg: PracticeConfig, out_dir: str | Path, progress: bool = True, callback=None,
    tensorboard: str | Path | None = None,
) -> dict:
    """Run (or resume) Algorithm 1 in `out_dir`; returns a summary of the final learner.

    `tensorboard`: a folder that also gets every metrics row as TensorBoard scalars.

    `callback(event, info)` is called after each metrics row ("eval", before the checkpoint) and
    before each sampling batch ("sample"); an exception it raises stops the run like a crash.
    """
    cfg.validate()
    if cfg.device == "cuda" and not torch.cuda.is_available():  # at run time: presets load anywhere
        raise DeliberateError("device: cuda, but torch sees no CUDA GPU; set device=cpu")
    distributed.init(cfg.device)  # joins torchrun's group; a no-op in a single process
    progress = progress and distributed.is_main()
    rd = RunDir(out_dir)
    with distributed.torch_threads(cfg.threads), faults.graceful_stop():
        backend = load_backend(cfg.generator, device=cfg.device, classes=load_classes(cfg.data))
        split, classes = load_split(cfg.data, cfg.data_dir, backend.image_shape)
        c, h, w = backend.image_shape
        check_fits(backend, split)  # all checks before the first byte is written
        meta = {**pool_meta(backend), **cfg.pool.meta()}
        cfg.pool.check_shape(meta["image_shape"])  # e.g. jpeg cannot store 4 channels
        if tensorboard is not None:
            from deliberate.tensorboard import TensorBoardSink, writer_class

            writer_class()  # installed, or one line now
        faults.ensure_free_space(out_dir, cfg.practice.initial * (c * h * w + 1024), "round 0")
        if cfg.cache:
            Round0Cache(cfg.cache).check()
        with distributed.main_first():  # rank 0 writes config.yaml; the others check theirs
            rd.claim(to_dict(cfg), clean=False, defaults=to_dict(type(cfg)()))  # checks the tree
        faults.point("run.claimed")
        main = Run(cfg, backend, split, None, rd, progress, callback)
        ckpt = rd.load_checkpoint(check=main.load)  # a wrong structure: refused, nothing written
        with distributed.main_first():  # rank 0 creates (or repairs) it, then the others open it
            pool = Pool.open_or_create(rd.root / "pool", meta)  # refuses another's (or codec)
            if distributed.is_main():  # all is checked: only now go a killed writer's temp files
                rd.clean_temp()
        faults.point("pool.created")
        main.pool = pool
        main.restore(ckpt)
        if len(pool) < main.state.pool_size:  # the pool drops rows of a deleted last shard
            raise DeliberateError(
                f"{pool.root} holds {len(pool)} images but this run had {main.state.pool_size}: "
                "a shard file was deleted; restore it (shards carry their own manifest rows)"
            )
        if tensorboard is not None and distributed.is_main():  # rows past the checkpoint replay
            main.sink = TensorBoardSink(tensorboard, purge_step=main.trainer.step_count + 1)
        try:
            main.loop(grow=True)
        finally:
            if main.sink is not None:
                main.sink.close()
        outs = [branches.finish_branch_out(main, *fork) for fork in main.state.forks]
        budgets = branches.budget_results(main) if cfg.learner.budgets else []
        prefixes = [branches.finish_prefix(main, n) for n in sorted(cfg.practice.prefixes)]
        summary = loop_summary(rd, main.state, branches=outs, budgets=budgets, prefixes=prefixes)
        if distributed.is_main():  # OOD, twins, shifted suite, Fig. 6 errors, compute; report
            summary = summarize_run(rd, cfg, backend, main.trainer.ema, split, pool, classes,
                                    summary, progress)  # fmt: skip
        distributed.barrier()  # the report exists when any rank returns
    return summary
