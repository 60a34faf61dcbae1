"""Train the embedded pixel-space generator on real images: EMA, progress bar, grids, resume.

`deliberate train-generator fmnist/generator --out DIR` runs `train_generator` on Fashion-MNIST;
`imagefolder/generator` trains on the `train/` class folders of your own images (16-64 px,
grey or RGB; docs/your-data.md).
All randomness (batches, timesteps, noise, CFG label dropout) comes from one torch.Generator
whose state is checkpointed with the weights, so an interrupted run resumes exactly.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from deliberate.config import field, to_dict
from deliberate.data.settings import DataSettings
from deliberate.errors import DeliberateError
from deliberate.generators.base import to_uint8
from deliberate.generators.pixel import PixelBackend, PixelModelConfig


@dataclass
class GeneratorTrainConfig:
    """Optimisation settings for the generator."""

    steps: int = field(20000, "optimizer steps", gt=0)
    batch_size: int = field(128, "images per step", gt=0)
    lr: float = field(1e-3, "peak AdamW learning rate", gt=0)
    weight_decay: float = field(0.0, "AdamW weight decay", ge=0)
    warmup_steps: int = field(500, "linear warm-up steps", ge=0)
    final_lr_frac: float = field(0.1, "cosine decay ends at this fraction of lr", ge=0, le=1)
    ema_decay: float = field(0.999, "EMA decay of the weights that are exported", ge=0, le=1)
    cfg_dropout: float = field(
        0.1, "probability of replacing the label by the null class", ge=0, le=1
    )
    grad_clip: float = field(1.0, "gradient-norm clip", gt=0)
    seed: int = field(0, "seed of all training randomness")
    checkpoint_every: int = field(1000, "steps between resumable checkpoints", gt=0)
    sample_every: int = field(2000, "steps between sample grids (0: never)", ge=0)
    threads: int = field(0, "torch CPU threads (0: torch default)", ge=0)


@dataclass
class GeneratorConfig:
    """`configs/fmnist/generator.yaml`: data, architecture and optimisation."""

    data_dir: str | None = field(
        None, "Fashion-MNIST folder (default: $DELIBERATE_DATA_DIR or Debian path)"
    )
    data: DataSettings = field(
        DataSettings(), "fashion_mnist, or imagefolder: the images of data.imagefolder.train_split"
    )
    model: PixelModelConfig = field(PixelModelConfig(), "architecture and schedule")
    train: GeneratorTrainConfig = field(GeneratorTrainConfig(), "optimisation")


def training_images(cfg: GeneratorConfig) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """The real images the generator learns: (uint8 (N, C, S, S), labels (N,), class names)."""
    m = cfg.model
    if cfg.data.kind == "imagefolder":
        from deliberate.data.imagefolder import load_train_images

        images, labels, classes = load_train_images(
            cfg.data.imagefolder, m.image_size, m.image_channels
        )
        names = classes.names
    else:
        from deliberate.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist

        if (m.image_size, m.image_channels) != (28, 1):
            raise DeliberateError(
                f"Fashion-MNIST is 28x28 grey, not {m.image_size}x{m.image_size}x"
                f"{m.image_channels}; set model.image_size=28 and model.image_channels=1"
            )
        data = load_fashion_mnist(cfg.data_dir)
        images, labels, names = data.train_images, data.train_labels, CLASS_NAMES
    x = torch.from_numpy(images)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(np.asarray(labels, dtype=np.int64)), tuple(names)


def _lr_factor(step: int, cfg: GeneratorTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.final_lr_frac + (1 - cfg.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


class _Checkpoint:
    """A resumable checkpoint folder written atomically (temp folder, then rename)."""

    def __init__(self, out: Path):
        self.path = out / "checkpoint"

    def save(self, backend, ema, opt, gen, step: int, config: dict) -> None:
        """Write the checkpoint folder; a full disk or an I/O error is one line, and the
        previous checkpoint stays in place (the new one is renamed in only once complete)."""
        try:
            self._save(backend, ema, opt, gen, step, config)
        except (OSError, RuntimeError) as e:  # torch.save reports ENOSPC as a RuntimeError
            shutil.rmtree(self.path.with_name("checkpoint.tmp"), ignore_errors=True)
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DeliberateError(
                f"cannot write the generator checkpoint in {self.path.parent} ({why}); free "
                "disk space, then re-run the same command to resume from the last checkpoint"
            ) from None

    def _save(self, backend, ema, opt, gen, step: int, config: dict) -> None:
        tmp = self.path.with_name("checkpoint.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(
            {k: v.contiguous() for k, v in backend.unet.state_dict().items()},
            tmp / "model.safetensors",
        )
        save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, tmp / "ema.safetensors")
        torch.save({"optimizer": opt.state_dict(), "rng": gen.get_state()}, tmp / "state.pt")
        progress = {"step": step, "config": config, "class_names": list(backend.class_names)}
        (tmp / "progress.json").write_text(json.dumps(progress))
        old = self.path.with_name("checkpoint.old")
        shutil.rmtree(old, ignore_errors=True)
        if self.path.exists():
            self.path.rename(old)
        tmp.rename(self.path)
        shutil.rmtree(old, ignore_errors=True)

    def load(self, backend, ema, opt, gen, config: dict) -> int:
        if not self.path.exists():
            old = self.path.with_name("checkpoint.old")
            if not old.exists():
                return 0
            old.rename(self.path)  # a crash between the two renames left only the old one
        progress = json.loads((self.path / "progress.json").read_text())
        if progress["config"] != config:
            raise DeliberateError(
                f"{self.path.parent} holds a generator run with a different config; "
                "use a new --out folder or restore the original config"
            )
        backend.unet.load_state_dict(load_file(self.path / "model.safetensors"))
        ema.load_state_dict(load_file(self.path / "ema.safetensors"))
        state = torch.load(self.path / "state.pt", weights_only=True)
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["rng"])
        return int(progress["step"])


def _save_grid(ema_backend: PixelBackend, path: Path, step: int) -> None:
    from deliberate.report.grids import save_sample_grid
    from deliberate.sampling import SamplerSettings, sample

    n = ema_backend.num_classes
    labels = torch.arange(n).repeat_interleave(10)
    out = sample(ema_backend, labels, list(range(len(labels))), SamplerSettings(steps=10, cfg=0.5))
    save_sample_grid(
        to_uint8(out.images).numpy(),
        labels.numpy(),
        ema_backend.class_names,
        path,
        per_class=10,
        title=f"EMA generator samples, step {step}",
    )


def train_generator(
    cfg: GeneratorConfig, out: str | Path, progress: bool = True, stop_after: int | None = None
) -> Path | None:
    """Train (or resume) the generator in `out`; returns the exported diffusers-format folder.

    `stop_after` ends this invocation after that many steps (checkpointed; returns None), so a
    long training can be split into several resumable sessions.
    """
    out = Path(out)
    cfg.model.validate()
    images, labels, class_names = training_images(cfg)  # refused before anything is written
    try:
        (out / "samples").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DeliberateError(
            f"cannot write to {out}: {e.strerror}; choose another --out"
        ) from None
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    config = to_dict(cfg)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    torch.manual_seed(tc.seed)
    backend = PixelBackend.from_config(cfg.model, class_names)
    ema = PixelBackend.from_config(cfg.model, class_names)
    ema.load_state_dict(backend.state_dict())
    ema.requires_grad_(False).eval()
    opt = torch.optim.AdamW(backend.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = DDIMScheduler.from_config(backend.scheduler_config)
    gen = torch.Generator().manual_seed(tc.seed)
    ckpt = _Checkpoint(out)
    start = ckpt.load(backend, ema, opt, gen, config)
    alphas = sched.alphas_cumprod
    null = backend.num_classes

    backend.train()
    bar = tqdm(
        total=tc.steps, initial=start, desc="train-generator", disable=not progress, unit="step"
    )
    losses: list[float] = []
    t0 = time.perf_counter()
    end = tc.steps if stop_after is None else min(tc.steps, start + stop_after)
    for step in range(start, end):
        for group in opt.param_groups:
            group["lr"] = tc.lr * _lr_factor(step, tc)
        idx = torch.randint(len(images), (tc.batch_size,), generator=gen)
        x0 = backend.encode(images[idx].float() / 255)
        y = labels[idx].clone()
        y[torch.rand(len(y), generator=gen) < tc.cfg_dropout] = null
        t = torch.randint(len(alphas), (len(y),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = {
            "epsilon": noise,
            "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0,
            "sample": x0,
        }[cfg.model.prediction_type]
        loss = F.mse_loss(backend.model_output(x_t, t, y), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(backend.parameters(), tc.grad_clip)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(
                list(ema.parameters()), list(backend.parameters()), 1 - tc.ema_decay
            )
        losses.append(loss.item())
        bar.update(1)
        if (step + 1) % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        done = step + 1
        if done % tc.checkpoint_every == 0 or done in (tc.steps, end):
            ckpt.save(backend, ema, opt, gen, done, config)
            with (out / "log.jsonl").open("a") as f:
                f.write(
                    json.dumps(
                        {
                            "step": done,
                            "loss": float(np.mean(losses[-tc.checkpoint_every :])),
                            "seconds": time.perf_counter() - t0,
                        }
                    )
                    + "\n"
                )
        if tc.sample_every and (done % tc.sample_every == 0 or done == tc.steps):
            _save_grid(ema, out / "samples" / f"step-{done:07d}.png", done)
    bar.close()
    if end < tc.steps:
        return None
    final = out / "generator"
    ema.save(final, extra_meta={"trained_steps": tc.steps, "train_config": config})
    return final


def export_checkpoint(out: str | Path, dest: str | Path | None = None) -> Path:
    """Export the EMA weights of a run's latest checkpoint (e.g. to stop a long run early)."""
    out = Path(out)
    ckpt = out / "checkpoint"
    if not (ckpt / "progress.json").is_file():
        raise DeliberateError(f"{out} has no checkpoint to export; train first")
    progress = json.loads((ckpt / "progress.json").read_text())
    from deliberate.config import from_dict

    cfg = from_dict(GeneratorConfig, progress["config"])
    if "class_names" in progress:
        names = tuple(progress["class_names"])
    else:  # checkpoints written before the names were recorded: Fashion-MNIST only
        from deliberate.data.fashion_mnist import CLASS_NAMES as names
    ema = PixelBackend.from_config(cfg.model, names)
    ema.load_state_dict(load_file(ckpt / "ema.safetensors"))
    dest = Path(dest) if dest is not None else out / "generator"
    ema.save(
        dest, extra_meta={"trained_steps": progress["step"], "train_config": progress["config"]}
    )
    return dest
