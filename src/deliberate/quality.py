"""Pool quality: how a set of generated images relates to the real images, in a judge's eyes.

The judge is a small ResNet trained on the 60k real Fashion-MNIST training images (the judge of
`benchmarks/generator.py`; shipped as `assets/fmnist-judge`, made by `python -m
deliberate.quality --train-judge`). Its penultimate features (global-average-pooled, 128-d)
are the space every metric below is computed in:

    fidelity    share of images the judge assigns to their intended class
    fd          Fréchet distance between Gaussian fits of the two feature sets (FID's formula)
    precision   share of generated images inside the real k-NN manifold   (Kynkäänniemi 2019)
    recall      share of real images inside the generated k-NN manifold
    density     how many real k-NN balls contain each generated image, / k (Naeem et al. 2020)
    coverage    share of real images whose k-NN ball contains a generated image

Precision/density rise with realism, recall/coverage with diversity. All are measured against
the real *test* images (the learner never trains on them; they only describe the pool). The
k-NN metrics depend on the sample sizes, so sets are compared at equal size (`max_images`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from deliberate.errors import DeliberateError
from deliberate.learner import Learner, build_learner, predict, to_float01

JUDGE = Path(__file__).parent / "assets" / "fmnist-judge" / "judge.safetensors"
K = 5  # neighbours of the k-NN metrics (Naeem et al.'s default)


def load_judge(path: str | Path = JUDGE) -> Learner:
    """The real-data judge (a small ResNet over 28x28 grey images, 10 classes)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DeliberateError(
            f"no judge at {path}; make it with `python -m deliberate.quality --train-judge`"
        )
    judge = build_learner("small_resnet", 10, 1, 28)
    judge.load_state_dict(load_file(path))
    return judge.eval().requires_grad_(False)


@torch.no_grad()
def features(judge: Learner, images, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features (N, D), predicted class (N,)) of uint8 or float images."""
    net = judge.backbone
    feats, preds = [], []
    for start in range(0, len(images), batch_size):
        x = judge.preprocess(to_float01(np.asarray(images[start : start + batch_size])))
        h = net.blocks(net.stem(x)).mean(dim=(2, 3))  # (B, D)
        feats.append(h.numpy())
        preds.append(net.head(h).argmax(-1).numpy())
    return np.concatenate(feats), np.concatenate(preds)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½) between Gaussian fits of two feature sets."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # singular product: offset both as FID does
        eps = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    value = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * np.real(root))
    return float(value)


def _kth_distance(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance of each row of x to its k-th nearest other row (N,)."""
    out = []
    for s in range(0, len(x), chunk):
        d = torch.cdist(x[s : s + chunk], x)  # (c, N); the row itself is at distance 0
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def prdc(real: np.ndarray, fake: np.ndarray, k: int = K, chunk: int = 2048) -> dict:
    """Precision, recall, density and coverage (Naeem et al. 2020, Eq. 1-4), in chunks."""
    if len(real) <= k or len(fake) <= k:
        raise DeliberateError(f"prdc needs more than k={k} real and generated images")
    r, f = torch.as_tensor(real, dtype=torch.float64), torch.as_tensor(fake, dtype=torch.float64)
    r_rad, f_rad = _kth_distance(r, k, chunk), _kth_distance(f, k, chunk)
    inside = torch.zeros(len(f), dtype=torch.float64)  # real balls holding each fake (density)
    f_hit = torch.zeros(len(f), dtype=torch.bool)  # precision
    r_hit = torch.zeros(len(r), dtype=torch.bool)  # recall
    r_cov = torch.zeros(len(r), dtype=torch.bool)  # coverage: nearest fake inside the real ball
    for s in range(0, len(r), chunk):
        d = torch.cdist(r[s : s + chunk], f)  # (c, F)
        in_real = d < r_rad[s : s + chunk, None]
        inside += in_real.sum(0)
        f_hit |= in_real.any(0)
        r_hit[s : s + chunk] = (d < f_rad[None, :]).any(1)
        r_cov[s : s + chunk] = d.min(1).values < r_rad[s : s + chunk]
    return {
        "precision": float(f_hit.double().mean()),
        "recall": float(r_hit.double().mean()),
        "density": float(inside.mean() / k),
        "coverage": float(r_cov.double().mean()),
    }


def set_quality(judge_out: tuple, labels, real_feats: np.ndarray) -> dict:
    """Fidelity, FD and PRDC of one image set, from its (features, predictions)."""
    feats, pred = judge_out
    return {
        "images": len(feats),
        "fidelity": float(np.mean(pred == np.asarray(labels))),
        "fd": frechet_distance(real_feats, feats),
        **prdc(real_feats, feats),
    }


def _subset(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """A fixed, sorted random subset of range(n) of size min(n, limit)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def per_class_accuracy(learner, images, labels, num_classes: int) -> list[float]:
    """Top-1 accuracy of `learner` on each class of (images, labels)."""
    labels = np.asarray(labels)
    pred = predict(learner, images)
    return [float(np.mean(pred[labels == c] == c)) for c in range(num_classes)]


def run_quality(root: str | Path, judge: Learner, split, *, max_images: int = 5000,
                refresh: bool = False) -> dict:  # fmt: skip
    """Pool quality of a finished run folder (whole pool, and per round for DP), and the
    per-class test accuracy of its final learner; cached in `quality.json`."""
    from deliberate.data.files import atomic_file
    from deliberate.data.pool import Pool

    root = Path(root)
    cache = root / "quality.json"
    pool = Pool(root / "pool")
    if cache.exists() and not refresh:
        cached = json.loads(cache.read_text())
        if cached.get("pool_images") == len(pool):
            return cached
    real_idx = _subset(len(split.test_labels), max_images)
    real_feats, _ = features(judge, split.test_images[real_idx])
    labels = pool.labels()
    rounds = pool.column("round")
    out = {"pool_images": len(pool), "max_images": max_images, "k": K}
    idx = _subset(len(pool), max_images)
    view = pool.images_view()
    out["pool"] = set_quality(features(judge, view[idx]), labels[idx], real_feats)
    for n in sorted(int(d.name.split("-")[1]) for d in root.glob("prefixes/n-*")):
        sel = _subset(n, max_images)  # the n-image static pool a prefix learner trained on
        out.setdefault("prefixes", {})[str(n)] = set_quality(features(judge, view[sel]),
                                                             labels[sel], real_feats)  # fmt: skip
    if rounds.max() > 0:
        out["rounds"] = {}
        for k in np.unique(rounds).tolist():
            sel = np.flatnonzero(rounds == k)[:max_images]
            out["rounds"][str(k)] = set_quality(features(judge, view[sel]), labels[sel], real_feats)
    out.update(_learner_accuracy(root, pool, split))
    with atomic_file(cache) as f:
        f.write(json.dumps(out, indent=1).encode())
    return out


def _learner_accuracy(root: Path, pool, split) -> dict:
    """Per-class real test accuracy of the run's final EMA learner (when its checkpoint loads)."""
    from types import SimpleNamespace

    from deliberate.rundir import load_learner

    h, w, *c = pool.image_shape
    shape = SimpleNamespace(num_classes=pool.num_classes, image_shape=(c[0] if c else 1, h, w))
    try:
        learner = load_learner(root, shape, what="the run")
    except DeliberateError:
        return {}
    return {"per_class_test_acc": per_class_accuracy(learner, split.test_images,
                                                     split.test_labels, pool.num_classes)}


def attach_quality(runs: list[dict], *, progress: bool = False) -> str | None:
    """Add `run["quality"]` to every Fashion-MNIST-shaped run (cached in its quality.json; a
    run folder without its pool, as benchmarks/archive_runs.py keeps one, gives its cache).

    Returns None, or one line saying why no run could be measured (no judge, no data).
    """
    from deliberate.data.fashion_mnist import load_eval_split
    from deliberate.data.pool import Pool

    fits = []
    for run in runs:
        pool_dir = Path(run["dir"]) / "pool"
        cache = Path(run["dir"]) / "quality.json"
        if not pool_dir.exists() and cache.exists():  # an archived run (benchmarks/archive_runs.py)
            run["quality"] = json.loads(cache.read_text())
        elif run.get("kind") == "practice" and (pool_dir / "pool.json").exists():
            pool = Pool(pool_dir)
            if pool.num_classes == 10 and tuple(pool.image_shape) == (28, 28):
                fits.append(run)
    if not fits:
        return None
    try:
        judge = load_judge()
        data_dir = fits[0].get("config", {}).get("data_dir")
        split = load_eval_split(data_dir)
    except DeliberateError as e:
        return f"pool quality not measured: {e}"
    for run in fits:
        run["quality"] = run_quality(run["dir"], judge, split)
    return None


def train_judge(data_dir: str | None = None, out: str | Path = JUDGE) -> Learner:
    """Train the judge on the 60k real training images (benchmarks/generator.py's recipe)."""
    from safetensors.torch import save_file

    from deliberate.data.fashion_mnist import load_fashion_mnist
    from deliberate.training import TrainConfig, train_classifier

    data = load_fashion_mnist(data_dir)
    cfg = TrainConfig(iterations=2000, batch_size=128, lr=4e-3, eval_every=500)
    judge, _ = train_classifier(data.train_images, data.train_labels, cfg, None, progress=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(out))
    return judge.eval()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Train the real-data judge of pool quality.")
    ap.add_argument("--train-judge", action="store_true", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=str(JUDGE))
    args = ap.parse_args()
    judge = train_judge(args.data_dir, args.out)
    from deliberate.data.fashion_mnist import load_fashion_mnist
    from deliberate.learner import evaluate

    data = load_fashion_mnist(args.data_dir)
    print(f"judge saved to {args.out}: real test accuracy "
          f"{evaluate(judge, data.test_images, data.test_labels):.4f}")  # fmt: skip
