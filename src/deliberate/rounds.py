"""One round of the pool: plan its seeds, sample them (entropy-guided by a learner or plain),
score them, and append them to the pool.

    seeds  <- plan(classes, ...)                    the seed layout, defined here only
    batch  <- guided_batch(...)(labels, seeds)      THE guided batch: `run`, `generate`, `prune`
    pool   <- generate_into_pool(batches)           shards, resume, torchrun (deliberate.generate)

Round 0 may be hard-linked from the shared round-0 cache (deliberate.cache, `cache: DIR`); an
oversampled round's candidates wait on disk until the choice (deliberate.candidates).

Seed layout: image seed = run seed * 1e9 + round * 1e7 + index. Round k of a run, the prune
baseline's candidates (round 90) and `deliberate generate --seed s` (round 0) never collide, and
any prefix of a plan is class-balanced, so the first n images of a pool are the n-image pool.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from deliberate import accounting, candidates, distributed, faults
from deliberate.cache import shared_round0
from deliberate.data.codecs import PoolSettings
from deliberate.data.files import _one_line, atomic_file, check_folder, check_regular, open_inside
from deliberate.data.pool import Pool
from deliberate.data.shards import LOAD_ERRORS, read_npz
from deliberate.errors import DeliberateError
from deliberate.generate import SampleFn, generate_into_pool
from deliberate.generators.base import Backend, to_uint8
from deliberate.guidance import EntropyGuidance, GuidanceSettings, learner_fingerprint
from deliberate.learner import inference_copy, to_float01
from deliberate.sampling import SampleOutput, SamplerSettings, sample
from deliberate.selection import score_stored

SEED_STRIDE = 1_000_000_000  # seeds of one run (or one `generate --seed`)
ROUND_STRIDE = 10_000_000  # seeds of one round within a run
CANDIDATE_ROUND = 90  # the prune baseline's candidates: apart from DP's rounds
MAX_ROUNDS = 99


def plan(
    classes: Sequence[int], per_class: int, seed: int, start: int = 0
) -> list[tuple[int, int]]:
    """(label, seed) pairs, classes interleaved so that any prefix is class-balanced."""
    if per_class < 1:
        raise DeliberateError(f"--per-class {per_class} must be >= 1")
    if seed < 0 or seed >= 2**31:
        raise DeliberateError(f"--seed {seed} must be in [0, 2^31)")
    pairs = []
    for _ in range(per_class):
        for c in classes:
            pairs.append((int(c), seed * SEED_STRIDE + start + len(pairs)))
    return pairs


def round_plan(num_classes: int, n: int, seed: int, k: int) -> list[tuple[int, int]]:
    """The first n (label, seed) pairs of round k of a run with `seed`."""
    return plan(range(num_classes), -(-n // num_classes), seed, k * ROUND_STRIDE)[:n]


def guided_batch(
    backend: Backend,
    settings: SamplerSettings,
    learner: torch.nn.Module | None = None,
    guidance: GuidanceSettings | None = None,
    *,
    device: str = "cpu",
    ledger: dict | None = None,
    on_batch: Callable[[list[int]], None] | None = None,
    codec: PoolSettings | None = None,
) -> SampleFn:
    """The function that turns (labels, seeds) into one batch; every command samples through it.

    With a `learner`, each image is scored by it on the image exactly as the pool gives it back
    (uint8, and encoded then decoded with the pool's lossy `codec`): entropy and prediction
    (the prune baseline's candidates: `guidance` None). With `guidance` too, it is
    guided by it (when ω > 0) and the guidance steps it skipped are recorded per image, so a
    resumed request adds up the same. Non-finite pixels are refused
    before anything of the batch is written. A SIGINT/SIGTERM stops before a batch.
    """
    guide = learner is not None and guidance is not None and guidance.omega > 0
    steps = guidance.guided_steps(settings.steps) if guide else ()
    # Guides and scores: the learner with BatchNorm folded, channels_last (learner.inference_copy)
    net = inference_copy(learner) if learner is not None else None

    def sample_fn(labels: torch.Tensor, seeds: list[int]) -> SampleOutput:
        faults.point("generate.batch")
        faults.raise_if_stopped()  # every earlier batch is in the pool: nothing to save
        if on_batch is not None:
            on_batch(seeds)
        hook = EntropyGuidance(backend, net, guidance) if guide else None  # this batch's
        out = sample(backend, labels, seeds, settings, guidance=hook, guided_steps=steps)
        if not torch.isfinite(out.images).all():
            raise DeliberateError(
                f"the generator produced NaN/inf pixels for seeds {seeds[0]}..; nothing of "
                "this batch was written: check generator.path and its weights"
            )
        if learner is not None:
            out.extras.update(score_stored(net, out.images, device, codec))
        if learner is not None and guidance is not None:  # a guided request, even at ω = 0
            skipped = hook.skipped_rows if hook is not None else None
            out.extras["guidance_skipped"] = torch.zeros(len(seeds)) if skipped is None else skipped
        if hook is not None and ledger is not None:
            accounting.add(ledger, seconds_guidance=hook.seconds)
        faults.point("generate.sampled")
        return out

    return sample_fn


def generate_round(cfg, backend: Backend, pool: Pool, k: int, learner, ledger: dict, *,
                   have: int, root, checkpoint_bytes: int, progress: bool = True,
                   on_batch=None) -> float | None:  # fmt: skip
    """Add round k of a practice run to `pool`: N plain images for k = 0, else P images guided
    (or, with `practice.oversample` R > 1, chosen from R x P candidates) by `learner`.

    `have` is the pool size before the round (part of it may already be in the pool: resume).
    Updates `ledger`; writes the plain-vs-guided twins; returns the round's mean learner entropy
    at generation (None for round 0).
    """
    s, p = cfg.generator.sampler, cfg.practice
    n = p.initial if k == 0 else min(p.per_round, p.max_images - have)
    m = round(p.oversample * n) if k else n  # candidates; the n best are kept (Fig. 5)
    stored = n + (m if m > n else 0)  # the candidates sit in candidates/round-k/ until chosen
    need = stored * (int(np.prod(backend.image_shape)) + 1024) + checkpoint_bytes
    faults.ensure_free_space(root, need, f"round {k} ({stored} images + checkpoint)")
    pairs = round_plan(backend.num_classes, m, cfg.seed, k)
    learner = learner if k else None  # D_0 is plain: the learner is untrained
    guided = learner is not None and cfg.guidance.omega > 0
    steps = cfg.guidance.guided_steps(s.steps) if guided else []
    extra = {"round": k, "omega": cfg.guidance.omega if guided else 0.0}
    if learner is not None:
        extra["fingerprint"] = learner_fingerprint(learner)
    sample_fn = guided_batch(backend, s, learner, cfg.guidance, device=cfg.device, ledger=ledger,
                             on_batch=on_batch, codec=pool.codec)  # fmt: skip
    t0 = time.perf_counter()
    if m > n:  # oversample, then keep the n highest-entropy candidates (same seeds if m = n)
        extra["oversample"] = p.oversample
        if len(pool) < have + n:  # else the round is stored: only its candidates are left
            pairs, sample_fn = candidates.choose(cfg, backend, root, k, pairs, n, sample_fn,
                                                 extra, progress)  # fmt: skip
        else:
            pairs = []
    shared = contextlib.nullcontext()
    if k == 0 and cfg.cache:  # link what the round-0 cache holds; the rest is sampled
        plan0 = lambda size: round_plan(backend.num_classes, size, cfg.seed, 0)  # noqa: E731
        shared = shared_round0(cfg, backend, pool, n, root, plan0)
    with shared:
        generate_into_pool(backend, pool, pairs, s, batch_size=cfg.generator.batch_size,
                           extra=extra, sample_fn=sample_fn, progress=progress)  # fmt: skip
    if m > n:
        candidates.remove(root, k)  # every chosen candidate is in the pool
    faults.point("round.generated")
    # counted from the request, so a resumed round adds up the same
    # A guided step shares its conditional forward with the CFG pass (guidance.guided_step);
    # without backprop through the denoiser it runs one extra gradient-free forward instead.
    extra_evals = 0 if cfg.guidance.through_denoiser else len(steps)
    ledger["denoiser_evals"] += m * (s.steps * (2 if s.cfg else 1) + extra_evals)
    ledger["guidance_backward"] += m * len(steps)
    ledger["seconds_generate"] += time.perf_counter() - t0
    accounting.add(ledger, images_generated=m, learner_score_images=m if k else 0,
                   images_discarded=m - n)  # fmt: skip
    if guided and distributed.is_main():
        save_twins(pool, backend, s, k, learner, root, cfg.device)
    cols = pool.columns(["round", "guidance_skipped", "entropy"])
    mine = cols["round"] == k
    skipped = cols["guidance_skipped"][mine]
    ledger["guidance_skipped"] += int(skipped[skipped > 0].sum())  # -1: a row without the key
    return float(np.mean(cols["entropy"][mine])) if k else None


def save_twins(pool: Pool, backend: Backend, settings: SamplerSettings, k: int, learner, root,
               device: str) -> None:  # fmt: skip
    """Round k's first guided images per class and their plain (omega = 0) twins: same seeds,
    both scored by the learner that guided the round. `twins/round-k.npz`; kept on resume.
    10 per class for 10 classes, fewer for more (1 each at 1,000): about 100-1,000 images."""
    per_class = max(1, min(10, 200 // backend.num_classes))
    path = root / "twins" / f"round-{k}.npz"
    if check_folder(path.parent) and check_regular(path):  # a symlink or FIFO: refused
        return
    cols = pool.columns(["round", "label", "seed", "entropy"])
    mine = np.flatnonzero(cols["round"] == k)
    ids = np.concatenate([mine[cols["label"][mine] == c][:per_class]
                          for c in range(backend.num_classes)])  # fmt: skip
    guided, labels = pool.get(ids)
    seeds = cols["seed"][ids]
    out = sample(backend, torch.as_tensor(labels), seeds.tolist(), settings)
    plain = torch.from_numpy(pool.codec.roundtrip(to_uint8(out.images.cpu()).numpy()))  # as stored
    with torch.no_grad():
        h_plain = learner.entropy(to_float01(plain).to(device)).cpu().numpy()
    if not check_folder(path.parent):
        path.parent.mkdir()
    with atomic_file(path) as f:
        np.savez(f, plain=plain.numpy(), guided=guided, labels=labels,
                 seeds=seeds, entropy_plain=h_plain,
                 entropy_guided=cols["entropy"][ids])  # fmt: skip


def load_twins(root) -> dict[int, dict]:
    """The twins of every guided round of a run folder, by round."""
    twins = {}
    found = sorted((root / "twins").glob("round-*.npz")) if check_folder(root / "twins") else []
    for path in (p for p in found if p.stem[6:].isdigit()):
        try:
            with open_inside(root, f"twins/{path.name}") as f:
                twins[int(path.stem[6:])] = read_npz(f)
        except LOAD_ERRORS as e:
            raise DeliberateError(f"{path} is unreadable ({_one_line(e)}); delete it") from None
    return twins
