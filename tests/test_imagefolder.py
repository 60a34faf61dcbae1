"""ImageNet-style folders: the shipped ImageNet-100 list, class subsets, one-line errors for
missing classes or folders, streamed evaluation, OOD sets restricted to the shared classes."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from deliberate.config import load_config
from deliberate.data.imagefolder import (
    IMAGENET100,
    ClassList,
    ImageFolderSettings,
    class_list,
    load_imagefolder_split,
    load_ood,
    ood_accuracy,
    read_class_file,
)
from deliberate.errors import DeliberateError
from deliberate.learner import build_learner, evaluate, to_float01
from deliberate.practice import PracticeConfig
from tests.helpers import IDS, NAMES, WNIDS, write_imagefolder


class ColourLearner(torch.nn.Module):
    """Scores each class by closeness of the mean colour to its colour; `bias` favours a class."""

    def __init__(self, bias=(0.0, 0.0, 0.0)):
        super().__init__()
        self.register_buffer("colours", torch.tensor([[220, 120, 20], [120, 120, 120],
                                                      [240, 200, 0]]) / 255.0)  # fmt: skip
        self.register_buffer("bias", torch.tensor(bias))
        self.w = torch.nn.Parameter(torch.zeros(1))  # evaluate() reads the device from here

    def forward(self, images01):
        mean = images01.mean(dim=(2, 3))  # (B, 3)
        return -torch.cdist(mean, self.colours) * 10 + self.bias


def settings(root, **kw):
    return ImageFolderSettings(root=str(root), workers=0, image_size=16, **kw)


def test_shipped_imagenet100_list():
    ids = read_class_file(IMAGENET100)
    assert len(ids) == len(set(ids)) == 100
    assert all(len(i) == 9 and i[0] == "n" and i[1:].isdigit() for i in ids)
    assert ids[0] == "n02869837" and "n01749939" in ids  # the order of Tian et al.'s file


def test_class_list_names_and_imagenet_ids(tmp_path):
    write_imagefolder(tmp_path)
    classes = class_list(settings(tmp_path, classes=str(tmp_path / "classes.txt")))
    assert classes == ClassList(WNIDS, NAMES, IDS)  # from ROOT/LOC_synset_mapping.txt
    (tmp_path / "LOC_synset_mapping.txt").unlink()
    assert class_list(settings(tmp_path, classes="all")) == ClassList(WNIDS, WNIDS, None)
    # A train/ with all 1,000 class folders gives the ImageNet-1k index: the sorted position.
    for i in range(997):
        (tmp_path / "train" / f"n{i:08d}").mkdir()  # sort before ours
    got = class_list(settings(tmp_path, classes=str(tmp_path / "classes.txt")))
    wnids = sorted(p.name for p in (tmp_path / "train").iterdir())
    assert got.imagenet_ids == tuple(wnids.index(w) for w in WNIDS) == (997, 998, 999)


def test_missing_classes_and_folders_are_one_line_errors(tmp_path):
    write_imagefolder(tmp_path)
    listed = tmp_path / "more.txt"
    listed.write_text("\n".join([*WNIDS, "n90000005"]) + "\n")  # an ImageNet class, no folder
    with pytest.raises(DeliberateError, match=r"1 of 4 classes have no folder .*n90000005") as e:
        load_imagefolder_split(settings(tmp_path, classes=str(listed)))
    assert "\n" not in str(e.value)
    listed.write_text("\n".join([*WNIDS, "n09999999"]) + "\n")  # not an ImageNet-1k class
    with pytest.raises(DeliberateError, match="n09999999 is not in .*LOC_synset_mapping.txt"):
        load_imagefolder_split(settings(tmp_path, classes=str(listed)))
    (tmp_path / "LOC_synset_mapping.txt").unlink()
    with pytest.raises(DeliberateError, match="val2/ not found|val2 not found"):
        load_imagefolder_split(settings(tmp_path, classes="all", val_split="val2"))
    with pytest.raises(DeliberateError, match="needs data.imagefolder.root"):
        load_imagefolder_split(ImageFolderSettings())
    with pytest.raises(DeliberateError, match="99 of 100 classes have no folder"):
        load_imagefolder_split(settings(tmp_path))
    for f in (tmp_path / "val" / WNIDS[1]).iterdir():
        f.unlink()
    with pytest.raises(DeliberateError, match=f"{WNIDS[1]} holds no images"):
        load_imagefolder_split(settings(tmp_path, classes="all"))
    listed.write_text(f"{WNIDS[0]}\n{WNIDS[0]}\n")
    with pytest.raises(DeliberateError, match="twice"):
        read_class_file(listed)
    with pytest.raises(DeliberateError, match="unknown set"):
        load_imagefolder_split(settings(tmp_path, classes="all", ood={"imagenet_x": "."}))


def test_streamed_evaluation_equals_in_memory(tmp_path):
    write_imagefolder(tmp_path)
    split = load_imagefolder_split(settings(tmp_path, classes=str(tmp_path / "classes.txt")))
    assert len(split.val_images) == 6 and len(split.test_images) == 12  # test = real train split
    assert split.val_labels.tolist() == [0, 0, 1, 1, 2, 2]
    learner = ColourLearner()
    batches = list(split.test_images.iter_batches(5))
    assert [s for s, _ in batches] == [0, 5, 10] and batches[0][1].shape == (5, 3, 16, 16)
    in_memory = torch.cat([b for _, b in batches])
    assert evaluate(learner, split.test_images, split.test_labels, batch_size=5) == 1.0
    assert evaluate(learner, in_memory, split.test_labels) == 1.0
    wrong = ColourLearner(bias=(100.0, 0.0, 0.0))  # always class 0
    assert evaluate(wrong, split.val_images, split.val_labels, batch_size=4) == pytest.approx(1 / 3)
    assert torch.equal(to_float01(in_memory), in_memory)


def test_ood_sets_use_the_shared_classes(tmp_path):
    write_imagefolder(tmp_path)
    classes = ClassList(WNIDS, NAMES, IDS)
    # ImageNet-R / -A style: wnid folders of 200 classes; here two of ours and one foreign.
    r = tmp_path / "imagenet-r"
    for wnid in (WNIDS[2], "n09999999", WNIDS[0]):
        (r / wnid).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (20, 20), (240, 200, 0) if wnid == WNIDS[2] else (220, 120, 20)).save(
                r / wnid / f"{i}.jpg")  # fmt: skip
    ood = load_ood("imagenet_r", r, classes, size=16)
    assert ood.covered == (0, 2) and ood.labels.tolist() == [0, 0, 2, 2]
    # Logits favour class 1, absent from the set: restricted to the shared classes it is right.
    assert ood_accuracy(ColourLearner(bias=(0.0, 50.0, 0.0)), ood) == 1.0
    # ImageNet-V2: folders named by ImageNet-1k index.
    v2 = tmp_path / "imagenet-v2"
    for idx in (281, 5):
        (v2 / str(idx)).mkdir(parents=True)
        Image.new("RGB", (20, 20), (120, 120, 120)).save(v2 / str(idx) / "a.jpeg")
    ood = load_ood("imagenet_v2", v2, classes, size=16)
    assert ood.covered == (1,) and ood.labels.tolist() == [1]
    with pytest.raises(DeliberateError, match="synset_mapping"):
        load_ood("imagenet_v2", v2, ClassList(WNIDS, NAMES), size=16)
    with pytest.raises(DeliberateError, match="shares no class"):
        load_ood("imagenet_sketch", v2, classes, size=16)
    with pytest.raises(DeliberateError, match="not found"):
        load_ood("imagenet_a", tmp_path / "nope", classes)


PRESETS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", ["imagenet100/dp", "imagenet100/static", "imagenet1k/dp"])
def test_paper_presets_carry_the_recipe(name):
    cfg = load_config(PracticeConfig, PRESETS / f"{name}.yaml")
    in1k = name.startswith("imagenet1k")
    lrn, p = cfg.learner, cfg.practice
    assert cfg.generator.kind == "stable_diffusion" and cfg.data.kind == "imagefolder"
    assert (cfg.pool.codec, cfg.pool.quality) == ("jpeg", 90)  # 256² RGB pools compressed
    assert cfg.generator.sampler.cfg == 3.0 and cfg.generator.sampler.scheduler == "ddim"
    assert (lrn.arch, lrn.input_size, lrn.label_smoothing) == ("vit_b_16", 224, 0.11)
    assert (lrn.mixup_alpha, lrn.cutmix_alpha, lrn.warmup_frac, lrn.cooldown_frac) == (
        0.5,
        1,
        0.1,
        0.2,
    )
    assert (lrn.iterations, lrn.batch_size, lrn.lr) == (
        (100_000, 128, 0.0016) if in1k else (50_000, 64, 0.003)
    )
    if name.endswith("static"):
        assert p.per_round == 0 and cfg.guidance.omega == 0
    else:
        assert cfg.guidance.omega == 0.05 and p.patience_mode == "incremental"
        assert (p.initial, p.per_round, p.patience) == (
            (654_000, 654_000, 1) if in1k else (64_000, 32_000, 4)
        )


@pytest.mark.parametrize("arch, params", [("vit_b_16", 85.9e6), ("resnet50", 23.7e6)])
def test_paper_learners_build_and_run(arch, params):
    """torchvision ViT-B/16 and ResNet-50, from scratch, fed 256² RGB through the 224² resize."""
    torch.manual_seed(0)
    learner = build_learner(arch, 100, 3, 256, input_size=224).eval()
    assert sum(p.numel() for p in learner.parameters()) == pytest.approx(params, rel=0.01)
    if arch == "vit_b_16":  # torchvision zero-initialises the head: uniform logits, no gradient
        torch.nn.init.normal_(learner.backbone.heads.head.weight, std=0.02)
    x = torch.rand(1, 3, 256, 256, requires_grad=True)
    (grad,) = torch.autograd.grad(learner.entropy(x).sum(), x)
    assert learner(x).shape == (1, 100) and grad.abs().sum() > 0
