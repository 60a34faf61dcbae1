"""Oversample-then-prune (SPEC §4, Fig. 5a/d): the selection DP's guidance replaces.

    scorer  <- a learner trained on N plain images (the same recipe and images as DP's round 0;
               it is a static practice run, `per_round: 0`)
    C       <- R * M plain candidates (omega = 0), each scored by the scorer's entropy
    S       <- the M highest-entropy candidates, class-balanced (M / classes per class)
    learner <- a fresh learner trained on D_0 + S (or S alone) with the same iteration budget

The R * M - M candidates left out are counted as discarded in the ledger: they cost generation
and scoring but never reach the learner. R = 1 keeps every candidate, i.e. static generation of
N + M images. The static baseline at several sizes needs no code here: it is a practice run with
`per_round: 0` and `initial = max_images` (configs/fmnist/scaling.yaml).

Run folder: config.yaml; scorer/ (a practice run); candidates/ (a pool: seed, label, entropy
and scorer prediction per candidate); selection.json; train/ (the final learner, a practice-style
run folder with its own pool of the kept images); summary.json. Re-running resumes each stage.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deliberate import accounting, distributed
from deliberate.config import field, from_dict, to_dict
from deliberate.data import load_classes, load_split
from deliberate.data.files import atomic_file
from deliberate.data.pool import RESERVED, Pool
from deliberate.errors import DeliberateError
from deliberate.generate import generate_into_pool
from deliberate.generators import check_fits, load_backend
from deliberate.practice import PracticeConfig, Run, run_practice
from deliberate.rounds import CANDIDATE_ROUND, ROUND_STRIDE, guided_batch, round_plan
from deliberate.rundir import RunDir, load_learner
from deliberate.selection import select_top_entropy
from deliberate.summary import finish_summary, write_summary

MAX_CANDIDATES = 10 * ROUND_STRIDE  # seeds 90e7 .. 99.99e7 stay inside the run's seed block
COPY_CHUNK = 4096  # D_0 images per shard when copied into the final learner's pool


@dataclass
class PruneSettings:
    """How many candidates, how many kept, and what the final learner trains on."""

    ratio: float = field(4.0, "R: plain candidates per kept image; 1 = keep all (no pruning)", ge=1)
    selected: int = field(1000, "M: candidates kept, the highest-entropy ones per class", ge=1)
    keep_initial: bool = field(True, "train on the scorer's N images + the M kept (else M only)")
    scorer_iterations: int = field(0, "the scorer's optimiser steps; 0 = learner.iterations", ge=0)
    scorer_dir: str | None = field(
        None, "the scorer's run folder, shareable between runs; null = OUT/scorer"
    )

    @property
    def candidates(self) -> int:
        return round(self.ratio * self.selected)


@dataclass
class PruneConfig(PracticeConfig):
    """A practice config (N = practice.initial; rounds unused) plus the pruning knobs."""

    prune: PruneSettings = field(PruneSettings(), "oversample-then-prune (SPEC §4)")

    def validate(self) -> None:
        super().validate()
        if self.prune.candidates >= MAX_CANDIDATES:
            raise DeliberateError(
                f"prune: ratio x selected = {self.prune.candidates} candidates; keep it < 1e8"
            )


def _practice_dict(cfg: PruneConfig, images: int, iterations: int) -> dict:
    d = to_dict(cfg)
    del d["prune"]  # a shared scorer folder must not depend on the pruning knobs
    d["practice"].update(initial=images, per_round=0, max_images=images)
    d["learner"]["iterations"] = iterations
    d["guidance"]["omega"] = 0.0  # static: no round is ever guided
    return d


def scorer_config(cfg: PruneConfig) -> PracticeConfig:
    """The static run at N images whose final EMA learner scores the candidates."""
    its = cfg.prune.scorer_iterations or cfg.learner.iterations
    return from_dict(PracticeConfig, _practice_dict(cfg, cfg.practice.initial, its))


def final_config(cfg: PruneConfig) -> PracticeConfig:
    """The static-style config of the final learner (its pool is the selection, not sampled)."""
    n = cfg.prune.selected + (cfg.practice.initial if cfg.prune.keep_initial else 0)
    return from_dict(PracticeConfig, _practice_dict(cfg, n, cfg.learner.iterations))


def _candidates(cfg: PruneConfig, backend, scorer, pool: Pool, progress: bool) -> dict:
    """Sample and score the R * M candidates the pool lacks; returns the ledger of the request."""
    s, n = cfg.generator.sampler, cfg.prune.candidates
    pairs = round_plan(backend.num_classes, n, cfg.seed, CANDIDATE_ROUND)
    sample_fn = guided_batch(backend, s, scorer, device=cfg.device, codec=pool.codec)  # plain

    t0 = time.perf_counter()
    extra = {"round": 1, "omega": 0.0}
    generate_into_pool(backend, pool, pairs, s, batch_size=cfg.generator.batch_size,
                       extra=extra, sample_fn=sample_fn, progress=progress)  # fmt: skip
    return {
        "denoiser_evals": n * s.steps * (2 if s.cfg else 1),
        "images_generated": n,
        "learner_score_images": n,
        "images_discarded": n - cfg.prune.selected,
        "seconds_generate": time.perf_counter() - t0,
    }


def _plain_records(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in RESERVED} for r in records]


def _fill_train_pool(pool: Pool, scorer_pool: Pool, cands: Pool, chosen, keep_initial: bool):
    """Copy D_0 (optional) then the selected candidates into the final pool, once each.

    D_0 goes over in chunks read through the memory-mapped view, so it never sits in RAM whole;
    each chunk is one atomic shard, and a re-run continues after the last one written."""
    n0 = len(scorer_pool) if keep_initial else 0
    if len(pool) < n0:
        view = scorer_pool.images_view()
        for start in range(len(pool), n0, COPY_CHUNK):
            stop = min(start + COPY_CHUNK, n0)
            rows = _plain_records(scorer_pool.records(range(start, stop)))
            pool.append(np.asarray(view[start:stop]), rows)
    if len(pool) == n0:
        images, _ = cands.get(chosen)
        rows = _plain_records(cands.records(chosen))
        kept = [{**r, "candidate_id": int(i)} for r, i in zip(rows, chosen, strict=True)]
        pool.append(images, kept)
    if len(pool) != n0 + len(chosen):
        raise DeliberateError(f"{pool.root} holds {len(pool)} images, not {n0 + len(chosen)}")


def run_prune(cfg: PruneConfig, out_dir: str | Path, progress: bool = True, callback=None) -> dict:
    """Run (or resume) oversample-then-prune in `out_dir`; returns its summary."""
    cfg.validate()
    rd = RunDir(out_dir)
    rd.claim(to_dict(cfg), defaults=to_dict(PruneConfig()))
    root = rd.root
    score_cfg, train_cfg = scorer_config(cfg), final_config(cfg)
    scorer_root = Path(cfg.prune.scorer_dir) if cfg.prune.scorer_dir else root / "scorer"
    scorer_summary = run_practice(score_cfg, scorer_root, progress=progress)
    with distributed.torch_threads(cfg.threads):
        backend = load_backend(cfg.generator, device=cfg.device, classes=load_classes(cfg.data))
        split, classes = load_split(cfg.data, cfg.data_dir, backend.image_shape)
        check_fits(backend, split)
        scorer = load_learner(scorer_root, backend, cfg.device, what="the prune scorer")
        scorer_pool = Pool(scorer_root / "pool")
        cands = Pool.open_or_create(root / "candidates", scorer_pool.meta)
        ledger_file = root / "candidates.json"  # kept, so a resumed run reports the same seconds
        if ledger_file.exists():
            cand_ledger = json.loads(ledger_file.read_text())
        else:
            cand_ledger = _candidates(cfg, backend, scorer, cands, progress)
            with atomic_file(ledger_file) as f:
                f.write(json.dumps(cand_ledger).encode())
        entropy, labels = cands.column("entropy"), cands.labels()
        chosen = select_top_entropy(entropy, labels, cfg.prune.selected, backend.num_classes)
        with atomic_file(root / "selection.json") as f:
            f.write(json.dumps({"candidate_ids": chosen.tolist()}).encode())

        trd = RunDir(root / "train")
        trd.claim(to_dict(train_cfg), defaults=to_dict(PracticeConfig()))
        # Copies of decoded lossy images are stored losslessly: re-encoding would change the
        # pixels the candidates were scored on.
        lossless = {"codec": "png"} if scorer_pool.codec.lossy else {}
        pool = Pool.open_or_create(trd.root / "pool", {**scorer_pool.meta, **lossless})
        _fill_train_pool(pool, scorer_pool, cands, chosen, cfg.prune.keep_initial)
        run = Run(train_cfg, backend, split, pool, trd, progress, callback, tag="prune")
        # From scratch, the pool is complete: train on it, no rounds.
        ckpt = trd.load_checkpoint(check=run.load)
        run.restore(ckpt, round=1, pending=False, pool_size=len(pool))
        run.loop(grow=False)
        last = trd.metrics()[-1]
        final = {
            "pool_size": len(pool),
            "rounds": 1,
            "iterations": last["iteration"],
            "val_acc": last["val_acc"],
            "test_acc": last["test_acc"],
            "branches": [],
            **{k: last[k] for k in run.state.ledger},
        }
        ema = run.trainer.ema
        final = finish_summary(trd.root, train_cfg, backend, ema, split, pool, final, progress)
        from deliberate.report.run import write_practice_report

        write_practice_report(trd.root, trd.metrics(), pool, final)

    # Generation-side counts of the final run are zero: its pool was copied, not sampled.
    ledger = accounting.combine(scorer_summary, cand_ledger, final)
    cost = scorer_summary["learner_cost"]
    summary = {
        "kind": "prune",
        "ratio": cfg.prune.ratio,
        "selected": cfg.prune.selected,
        "candidates": cfg.prune.candidates,
        "initial": cfg.practice.initial,
        "pool_size": len(pool),
        "iterations": final["iterations"],
        "val_acc": final["val_acc"],
        "test_acc": final["test_acc"],
        "shifted": final["shifted"],
        "round_errors": final["round_errors"],
        "scorer": {
            k: scorer_summary[k] for k in ("pool_size", "iterations", "val_acc", "test_acc")
        },
        "mean_entropy_kept": float(entropy[chosen].mean()),
        "mean_entropy_candidates": float(entropy.mean()),
        "learner_cost": cost,
        **ledger,
        "generation_compute": accounting.generation_compute(ledger, cost),
    }
    return write_summary(root, summary)
