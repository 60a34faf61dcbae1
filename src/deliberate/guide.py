"""A fixed classifier as the guide: `deliberate generate --guide ARCH:WEIGHTS` (the FGDS setup).

The guide is built as a `learner.Learner`, the differentiable resize / grey-to-RGB / normalise
in front of a backbone that a run's learner has, so `rounds.guided_batch` and
`guidance.EntropyGuidance` steer by it exactly as they steer by `--learner RUN_DIR`.

* ARCH: `small_resnet` (deliberate's learner) or a torchvision classification model's name.
* WEIGHTS: a .safetensors file, or a torch state_dict (.pt / .pth) read with
  `torch.load(weights_only=True)`; `{"state_dict": ...}` and a deliberate Learner's own state
  dict (keys `backbone.*`) are accepted too.
* The side file `WEIGHTS.json` (or the weights' name with `.json` for its suffix) says what
  the classifier was trained on, `GuideSettings` below; `--guide-size`, `--guide-mean` and
  `--guide-std` stand in for (or override) its first three keys:
  `{"input_size": 32, "mean": [0.5], "std": [0.5], "num_classes": 10, "classes": [...]}`.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from deliberate.config import field, from_dict
from deliberate.errors import DeliberateError
from deliberate.learner import Learner, build_backbone, torchvision_classifiers

SUFFIXES = (".safetensors", ".pt", ".pth")


@dataclass
class GuideSettings:
    """What the fixed classifier was trained on: its input and its classes (the side file)."""

    input_size: int = field(0, "side of its input (required); images are resized to it", ge=8)
    mean: list[float] = field([], "per-channel mean of its input normalisation, on [0, 1] pixels")
    std: list[float] = field([], "per-channel std of its input normalisation")
    num_classes: int = field(0, "its outputs; 0 = the generator's class count", ge=0)
    classes: list[str | int] = field(
        [], "the generator class (name or id) of each output, in output order; [] = the same"
    )

    def validate(self) -> None:
        if len(self.mean) not in (1, 3) or len(self.std) != len(self.mean):
            raise DeliberateError(
                f"mean {self.mean} and std {self.std} need 1 or 3 values each, as many of both"
            )
        if not all(s > 0 for s in self.std):
            raise DeliberateError(f"std {self.std} must be > 0")


def side_file(weights: Path) -> Path | None:
    """`WEIGHTS.json` beside the weights, else the weights' name with `.json` as its suffix."""
    for file in (weights.with_name(weights.name + ".json"), weights.with_suffix(".json")):
        if file.is_file():
            return file
    return None


def read_settings(weights: Path, **flags) -> GuideSettings:
    """The side file's settings, with the flags that are not None (input_size, mean, std) over it."""
    data, file = {}, side_file(weights)
    if file is not None:
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as e:
            raise DeliberateError(f"--guide: side file {file} is unreadable ({type(e).__name__}); "
                                  "fix its JSON") from None  # fmt: skip
        if not isinstance(data, dict):
            raise DeliberateError(f"--guide: side file {file} must hold a JSON object")
    data.update({k: v for k, v in flags.items() if v is not None})
    missing = [k for k in ("input_size", "mean", "std") if k not in data]
    if missing:
        raise DeliberateError(
            f"--guide {weights}: state its {', '.join(missing)} in {weights}.json (e.g. "
            '{"input_size": 32, "mean": [0.5], "std": [0.5]}) or by --guide-size/--guide-mean/'
            "--guide-std"
        )
    try:
        return from_dict(GuideSettings, data)
    except DeliberateError as e:
        raise DeliberateError(f"--guide {file or weights}: {e}") from None


def check_path(path: Path) -> None:
    """Refuse weights that are not a .safetensors / .pt / .pth file."""
    why = "is not a file" if not path.is_file() else "has an unknown suffix"
    if path.suffix not in SUFFIXES or not path.is_file():
        raise DeliberateError(
            f"--guide weights {path} {why}; give a .safetensors, .pt or .pth file"
        )


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a weights-only torch file; never unpickles objects."""
    check_path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f" ({found[1]})" if found else ""
        raise DeliberateError(f"--guide weights {path} hold pickled Python objects{what}, which "
                              "are never loaded; save model.state_dict() instead") from None  # fmt: skip
    except Exception as e:  # safetensors and torch raise many types for a damaged file
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise DeliberateError(f"--guide weights {path} are unreadable ({first})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DeliberateError(f"--guide weights {path} are not a state dict of tensors")
    for prefix in ("module.", "backbone."):  # DDP's wrapper, a deliberate Learner's backbone
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def class_order(settings: GuideSettings, names: tuple[str, ...]) -> list[int] | None:
    """order[j] = the guide output that stands for generator class j; None when the same."""
    if not settings.classes:
        return None
    k = len(names)
    ids = [names.index(c) if isinstance(c, str) and c in names else c for c in settings.classes]
    if len(ids) != k or sorted(i for i in ids if isinstance(i, int)) != list(range(k)):
        raise DeliberateError(
            f"--guide classes {settings.classes} must name each of the generator's {k} classes "
            f"once ({', '.join(names)}, or ids 0..{k - 1}), in the guide's output order"
        )
    return [ids.index(j) for j in range(k)]


class Reordered(nn.Module):
    """A classifier whose logits are put in the generator's class order."""

    def __init__(self, net: nn.Module, order: list[int]):
        super().__init__()
        self.net = net
        self.register_buffer("order", torch.tensor(order), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, self.order]  # (B, K) in the generator's order


def _outputs(state: dict, model: nn.Module, k: int) -> int | None:
    """The guide's output count when its head (the model's last weight and bias, k rows) is
    what does not fit a k-class model, else None."""
    own = model.state_dict()
    head = [name for name, v in own.items() if v.dim() > 0][-2:]
    rows = {state[n].shape[0] for n in head
            if n in state and state[n].dim() == own[n].dim() and state[n].shape != own[n].shape
            and own[n].shape[0] == k}  # fmt: skip
    return rows.pop() if len(rows) == 1 else None


def load_guide(spec: str, backend, device: str = "cpu", **flags) -> Learner:
    """The fixed classifier `ARCH:WEIGHTS` as a Learner on the backend's images, in eval mode.

    `flags` (input_size, mean, std; None = the side file's) override the side file.
    """
    arch, sep, weights = spec.partition(":")
    if not sep or not arch or not weights:
        raise DeliberateError(
            f"--guide {spec!r} must be ARCH:WEIGHTS (e.g. resnet18:clf.safetensors)"
        )
    if arch != "small_resnet" and arch not in torchvision_classifiers():
        raise DeliberateError(
            f"--guide architecture {arch!r} is unknown; use small_resnet or a torchvision "
            "classification model (resnet18, mobilenet_v3_small, vit_b_16, ...)"
        )
    path = Path(weights).expanduser()
    check_path(path)
    settings = read_settings(path, **flags)
    c, k = backend.image_shape[0], backend.num_classes
    if settings.num_classes and settings.num_classes != k:
        raise DeliberateError(f"--guide {spec}: the guide has {settings.num_classes} outputs but "
                              f"the generator has {k} classes; use a classifier of its classes")  # fmt: skip
    channels = len(settings.mean) if arch == "small_resnet" else 3
    if channels not in (c, 3) or len(settings.mean) != channels:
        raise DeliberateError(
            f"--guide {spec}: a {len(settings.mean)}-channel mean/std does not fit {arch} on the "
            f"generator's {c}-channel images (torchvision models take 3)"
        )
    order = class_order(settings, tuple(backend.class_names))
    state = read_weights(path)
    try:
        net = build_backbone(arch, k, channels, settings.input_size)
    except (AssertionError, ValueError, TypeError, RuntimeError) as e:  # torchvision's checks
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise DeliberateError(f"--guide {spec}: cannot build {arch} for input_size "
                              f"{settings.input_size} ({first})") from None  # fmt: skip
    if (outputs := _outputs(state, net, k)) is not None:
        raise DeliberateError(f"--guide {spec}: the guide has {outputs} outputs but the "
                              f"generator has {k} classes; use a classifier of its classes")  # fmt: skip
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:200]
        raise DeliberateError(f"--guide {spec}: the weights do not fit {arch} ({first})") from None
    guide = Learner(
        net if order is None else Reordered(net, order),
        num_classes=k,
        in_channels=c,
        input_size=settings.input_size,
        backbone_channels=channels,
        mean=tuple(settings.mean),
        std=tuple(settings.std),
    )
    return guide.to(device).eval()
