"""GPU check of the paper-scale path, in at most 8 minutes on one H100/H200 with no downloads.

It times SD-1.5 plain vs entropy-guided sampling, ViT-B/16 training with bf16 autocast, and the
write of a run checkpoint:

* Sampling. UNet, VAE and CLIP text encoder in SD-1.5's exact architecture with random weights
  (speed does not depend on the weights; `sd15` of benchmarks/latent_speed.py) behind
  `StableDiffusionBackend`, at the settings of configs/imagenet100/dp.yaml read from the preset:
  512² generation (64² latents) resized to the stored 256², 30 DDIM steps, CFG λ = 3,
  ω = 0.05 at steps 0, 5, ..., 25, gradient checkpointing, guided by a ViT-B/16 at 224². Every
  batch goes through `rounds.guided_batch`, the function each round of the practice loop samples
  with (`sampling.sample` + `guidance.EntropyGuidance`, then the learner's score of the stored
  pixels); plain is its round-0 form. float16 and bfloat16, batch sizes 4, 8, 16, peak memory.
* Training. ViT-B/16 images/s at the preset's per-GPU batch: a raw forward/backward/AdamW loop
  under bf16 autocast with fp32 master weights (the library's `Trainer` has no autocast), and
  the library's `Trainer` as the loop runs it (fp32, Mixup/CutMix, crop-flip, EMA).
* Checkpoint. The trainer's checkpoint (model, EMA, AdamW moments) written as the loop writes
  it (`RunDir.save_checkpoint`: serialise, write, fsync, rename): seconds and bytes.

Each timing is the median of 3 after one warm-up (for sampling a short run of the same batch),
between `torch.cuda.synchronize()` calls. Each section has a share of `--budget` seconds; a batch
size or repeat that would not fit is skipped and the output says so. Prints markdown tables for
BENCHMARKS.md and one JSON line. docs/paper-scale.md, "GPU check", says what to do with them.

  python benchmarks/gpu_check.py [--device cuda] [--out gpu.json]
  python benchmarks/gpu_check.py --tiny [--device cpu]   # tiny models, the same code (a test)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deliberate.config import load_config
from deliberate.data.imagefolder import LISTS, read_class_file
from deliberate.errors import DeliberateError
from deliberate.generators.latent import StableDiffusionBackend
from deliberate.learner import build_learner
from deliberate.practice import LoopState, PracticeConfig
from deliberate.presets import resolve
from deliberate.rounds import guided_batch
from deliberate.rundir import RunDir
from deliberate.training import Trainer

PRESET = "imagenet100/dp"
SHARES = {"sampling": 0.72, "training": 0.14, "checkpoint": 0.14}  # of --budget
DTYPES = ("float16", "bfloat16")


class Budget:
    """The seconds one section may spend; what it skips goes to the shared `notes`."""

    def __init__(self, name: str, seconds: float, notes: list[str]):
        self.name, self.seconds, self.notes = name, seconds, notes
        self.start = time.perf_counter()

    def fits(self, seconds: float) -> bool:
        """Whether `seconds` more stay within the budget."""
        return time.perf_counter() - self.start + seconds <= self.seconds

    def skip(self, what: str) -> None:
        self.notes.append(f"{self.name}: {what} skipped ({self.seconds:.0f} s budget)")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device, reset: bool = False) -> float | None:
    """Peak allocated GPU memory since the last reset, GiB (None on the CPU); or reset it."""
    if device.type != "cuda":
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def measure(fn, device, repeats: int, budget: Budget, what: str) -> tuple[float, int]:
    """(median seconds, runs) of fn(r), r = 1..repeats, after the warm-up fn(0); the repeats
    stop early (one at least) when the next would overrun the budget."""
    times: list[float] = []
    for r in range(repeats + 1):
        if r > 1 and not budget.fits(times[-1]):
            budget.skip(f"{what}: repeats {r}-{repeats}")
            break
        sync(device)
        t0 = time.perf_counter()
        fn(r)
        sync(device)
        if r:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


@dataclasses.dataclass
class Scale:
    """The sizes of one check: the preset's (on a GPU) or tiny ones (--tiny, on the CPU)."""

    tiny: bool
    batches: list[int]  # sampling batch sizes
    repeats: int  # timed runs per measurement, after one warm-up
    classes: int
    arch: str  # the learner
    image_size: int  # stored side: the decode is resized to it, the learner trains on it
    input_size: int | None  # the learner's own resize
    train_batch: int
    train_steps: int  # optimiser steps per timed run


def scale(cfg: PracticeConfig, args) -> Scale:
    """The preset's sizes, or the tiny ones of --tiny (16 px, a small CNN, batch 2, 1 repeat)."""
    if args.tiny:
        return Scale(True, args.batches or [2], args.repeats or 1, 10, "small_resnet", 16, None,
                     2, 1)  # fmt: skip
    lrn, classes = cfg.learner, read_class_file(LISTS / f"{cfg.data.imagefolder.classes}.txt")
    return Scale(False, args.batches or [4, 8, 16], args.repeats or 3, len(classes), lrn.arch,
                 cfg.generator.latent.image_size, lrn.input_size or None, lrn.batch_size, 20)  # fmt: skip


def seeded_batches(sample_fns, labels: torch.Tensor):
    """fn(r): batch r (seeds r·B ... r·B + B - 1) by sample_fns[1]; the warm-up r = 0 by [0]."""
    b = len(labels)
    return lambda r: sample_fns[min(r, 1)](labels, list(range(r * b, (r + 1) * b)))


def sample_row(backend, learner, cfg: PracticeConfig, batch: int, sc: Scale, device,
               budget: Budget) -> dict:  # fmt: skip
    """Plain and guided images/s and peak memory of one backend (one dtype) at one batch size."""
    s, guidance = cfg.generator.sampler, cfg.guidance
    warm = dataclasses.replace(s, steps=guidance.every + 1)  # short: guided and plain steps
    labels = torch.arange(batch) % sc.classes
    row: dict = {"batch": batch}
    for mode, guide, how in (("plain", None, None), ("guided", learner, guidance)):
        # The practice loop's batch function: round 0 (plain) and round k >= 1 (guided, scored).
        fns = [guided_batch(backend, st, guide, how, device=device) for st in (warm, s)]
        peak_gib(device, reset=True)
        what = f"{backend.settings.dtype} batch {batch} {mode}"
        seconds, n = measure(seeded_batches(fns, labels), device, sc.repeats, budget, what)
        row[f"{mode}_img_s"], row[f"{mode}_repeats"] = batch / seconds, n
        row[f"{mode}_peak_gib"] = peak_gib(device)
    row["guided_over_plain"] = row["plain_img_s"] / row["guided_img_s"]
    return row


def sampling(cfg: PracticeConfig, sc: Scale, device, budget: Budget) -> list[dict]:
    """Plain and guided images/s and peak memory per (dtype, batch size)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from latent_speed import sd15, tokenizer

    torch.manual_seed(0)
    unet, vae, text, sched = sd15(sc.tiny)
    tok, letters = tokenizer(), string.ascii_lowercase  # the tokenizer knows letters only
    names = [f"class {a}{b}" for a in letters for b in letters][: sc.classes]
    learner = build_learner(sc.arch, sc.classes, 3, sc.image_size, input_size=sc.input_size)
    learner = learner.to(device).eval().requires_grad_(False)  # as the loop's EMA learner
    rows, per_image, lat = [], 0.0, cfg.generator.latent  # per_image: of the last row, s
    for batch in sc.batches:  # the first always runs; a later one if its estimate fits
        if rows and not budget.fits(per_image * batch * len(DTYPES) * (sc.repeats + 1)):
            budget.skip(f"batch sizes {', '.join(str(b) for b in sc.batches if b >= batch)}")
            break
        for dtype in DTYPES:
            run_dtype = dtype if device.type == "cuda" else "float32"  # no fast half on a CPU
            latent = dataclasses.replace(lat, dtype=run_dtype, image_size=sc.image_size)
            backend = StableDiffusionBackend(unet, vae, text, tok, sched, names, latent)
            try:
                row = sample_row(backend._prepare(device), learner, cfg, batch, sc, device, budget)
            except (torch.cuda.OutOfMemoryError, DeliberateError) as e:  # keep what was measured
                budget.notes.append(f"sampling: {dtype} batch {batch} failed ({str(e)[:200]})")
                continue
            rows.append(row | {"dtype": dtype, "run_dtype": run_dtype})
            per_image = 1 / row["plain_img_s"] + 1 / row["guided_img_s"]
    return rows


def raw_steps(net, lrn, batch: int, size: int, steps: int, device, amp: torch.dtype):
    """fn(r): `steps` forward/backward/AdamW steps of the bare model under autocast to `amp`
    (fp32 master weights: autocast casts per op, weights, grads and moments stay fp32)."""
    opt = torch.optim.AdamW(net.parameters(), lrn.lr, lrn.betas, weight_decay=lrn.weight_decay)
    x = torch.rand(batch, 3, size, size, device=device)  # (B, 3, S, S): stored size, resized by net
    y = torch.randint(net.num_classes, (batch,), device=device)

    def fn(r):
        for _ in range(steps):
            with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
                loss = F.cross_entropy(net(x), y, label_smoothing=lrn.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return fn


def training(cfg: PracticeConfig, sc: Scale, device, budget: Budget) -> tuple[list[dict], Trainer]:
    """Learner training images/s: the bare model under bf16 autocast, and the library's Trainer."""
    lrn, batch, size = cfg.learner, sc.train_batch, sc.image_size
    amp = torch.bfloat16 if device.type == "cuda" else torch.float32  # CPU: float32
    rows = []

    def row(what: str, dtype: torch.dtype, fn) -> None:
        peak_gib(device, reset=True)
        seconds, n = measure(fn, device, sc.repeats, budget, what)
        rows.append({"what": what, "dtype": str(dtype).removeprefix("torch."), "batch": batch,
                     "img_s": batch * sc.train_steps / seconds, "peak_gib": peak_gib(device),
                     "repeats": n})  # fmt: skip

    torch.manual_seed(0)
    net = build_learner(sc.arch, sc.classes, 3, size, input_size=sc.input_size).to(device)
    what = "bare model, forward/backward/AdamW under autocast (not the library's Trainer)"
    row(what, amp, raw_steps(net.train(), lrn, batch, size, sc.train_steps, device, amp))
    del net
    net = build_learner(sc.arch, sc.classes, 3, size, input_size=sc.input_size)
    trainer = Trainer(net.to(device), lrn.train_config(cfg.practice.eval_every, cfg.seed))
    # uint8 (B, S, S, 3) on the CPU, as the pool hands minibatches to Trainer.step
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    labels = np.arange(batch) % sc.classes
    what = "library Trainer.step (the loop's: Mixup/CutMix, crop-flip, EMA)"
    row(what, torch.float32, lambda r: [trainer.step(images, labels) for _ in range(sc.train_steps)])  # fmt: skip
    return rows, trainer


def checkpoint(trainer: Trainer, device, repeats: int, scratch: Path, budget: Budget) -> dict:
    """Seconds and bytes of the trainer's run checkpoint: `practice.Run.checkpoint`'s dict,
    written by the same `RunDir.save_checkpoint` (serialise, write, fsync, rename)."""
    state = {"trainer": trainer.state_dict(), "loop": dataclasses.asdict(LoopState()),
             "rng": torch.get_rng_state()}  # fmt: skip
    with tempfile.TemporaryDirectory(dir=scratch, prefix="gpu-check-") as tmp:
        rd = RunDir(tmp)
        write = lambda r: rd.save_checkpoint(state)  # noqa: E731
        seconds, n = measure(write, device, repeats, budget, "checkpoint write")
        size = rd.checkpoint_file.stat().st_size
    params = sum(p.numel() for p in trainer.model.parameters())
    return {"bytes": size, "write_s": seconds, "mb_s": size / seconds / 1e6, "params": params,
            "repeats": n, "scratch": str(scratch)}  # fmt: skip


def table(header: list[str], rows: list[list]) -> str:
    """A markdown table; None is shown as –."""
    cells = [header, ["---"] * len(header)] + [["–" if v is None else v for v in r] for r in rows]
    return "\n".join("| " + " | ".join(map(str, r)) + " |" for r in cells)


def tables(res: dict) -> str:
    """The markdown for BENCHMARKS.md: a line naming the card and settings, three tables."""
    gib = lambda v: None if v is None else f"{v:.1f}"  # noqa: E731
    cpu = " (float32 on the CPU)" if res["device_type"] == "cpu" else ""
    head = (f"GPU check on {res['device']}{' (tiny)' if res['tiny'] else ''}: torch {res['torch']}, "
            f"CUDA {res['cuda']}, diffusers {res['diffusers']}; {res['settings']}")  # fmt: skip
    sampling = table(
        [f"dtype{cpu}", "batch", "plain img/s", "guided img/s", "guided/plain", "plain peak GiB",
         "guided peak GiB"],
        [[r["dtype"], r["batch"], f"{r['plain_img_s']:.2f}", f"{r['guided_img_s']:.2f}",
          f"{r['guided_over_plain']:.2f}x", gib(r["plain_peak_gib"]), gib(r["guided_peak_gib"])]
         for r in res["sampling"]],
    )  # fmt: skip
    training = table(
        [f"learner training ({res['learner']})", "dtype", "batch", "img/s", "peak GiB"],
        [[r["what"], r["dtype"], r["batch"], f"{r['img_s']:.1f}", gib(r["peak_gib"])]
         for r in res["training"]],
    )  # fmt: skip
    c = res["checkpoint"]
    ckpt = table(
        ["checkpoint (model + EMA + AdamW moments)", "bytes", "write s", "MB/s"],
        [[f"{c['params']:,} parameters, RunDir.save_checkpoint", f"{c['bytes']:,}",
          f"{c['write_s']:.2f}", f"{c['mb_s']:.0f}"]],
    )  # fmt: skip
    skipped = [f"Skipped: {note}" for note in res["skipped"]]
    return "\n\n".join([head, sampling, training, ckpt, *skipped])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cuda (the default where there is one) or cpu (with --tiny)")  # fmt: skip
    ap.add_argument("--tiny", action="store_true", help="tiny models, the same code (a smoke run)")
    ap.add_argument("--batches", type=lambda v: [int(b) for b in v.split(",")],
                    help="sampling batch sizes (default 4,8,16; --tiny 2)")  # fmt: skip
    ap.add_argument("--repeats", type=int, help="timed runs per measurement (default 3; --tiny 1)")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for the 3 sections")
    ap.add_argument("--scratch", default=tempfile.gettempdir(), help="folder for the checkpoints")
    ap.add_argument("--out", help="also write the JSON line to this file")
    args = ap.parse_args()
    t0, device = time.perf_counter(), torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: this machine has no CUDA device; run --tiny on the CPU")
    if device.type == "cpu" and not args.tiny:
        ap.error("the full-size check would take hours on a CPU; add --tiny (tiny models)")
    cfg = load_config(PracticeConfig, resolve(PRESET))
    sc, notes, took = scale(cfg, args), [], {}

    def section(name: str, fn, *fn_args):
        """fn(*fn_args, its budget), timed; the budget starts with the section."""
        start = time.perf_counter()
        out = fn(*fn_args, Budget(name, SHARES[name] * args.budget, notes))
        took[name] = time.perf_counter() - start
        return out

    rows = section("sampling", sampling, cfg, sc, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the SD components are gone: room for the learner
    train_rows, trainer = section("training", training, cfg, sc, device)
    ckpt = section("checkpoint", checkpoint, trainer, device, sc.repeats, Path(args.scratch))
    import diffusers

    s, g, lat = cfg.generator.sampler, cfg.guidance, cfg.generator.latent
    settings = (
        f"preset {PRESET}: {s.steps} {s.scheduler.upper()} steps, CFG λ {s.cfg:g}, ω {g.omega:g} "
        f"({g.mode}) at steps {g.guided_steps(s.steps)}, gradient checkpointing "
        f"{lat.gradient_checkpointing}, decode resized to {sc.image_size}², {sc.arch} learner at "
        f"{sc.input_size or sc.image_size}², {sc.classes} classes; median of {sc.repeats} runs "
        "after a warm-up"
    )
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
           "device_type": device.type, "tiny": sc.tiny, "torch": torch.__version__,
           "cuda": torch.version.cuda, "diffusers": diffusers.__version__, "learner": sc.arch,
           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
           "settings": settings, "scale": dataclasses.asdict(sc), "sampling": rows,
           "training": train_rows, "checkpoint": ckpt, "skipped": notes, "budget_s": args.budget,
           "section_s": took, "seconds": time.perf_counter() - t0}  # fmt: skip
    print(tables(res))
    line = json.dumps(res)
    print(line)
    if args.out:
        Path(args.out).write_text(line + "\n")


if __name__ == "__main__":
    main()
