"""The real-data reader on the real files and on damaged copies; the fixed val/test split."""

import gzip
import shutil

import numpy as np
import pytest

from deliberate.data import fashion_mnist as fm
from deliberate.errors import DeliberateError


@pytest.fixture(scope="module")
def real():
    return fm.load_fashion_mnist()


@pytest.fixture()
def copy_dir(tmp_path, real):
    """A writable copy of the four idx files (gzipped, as Debian ships them)."""
    for stem in fm.FILES.values():
        shutil.copy(fm._find_file(real.root, stem), tmp_path / (stem + ".gz"))
    return tmp_path


def test_real_files_load_with_expected_shapes(real):
    assert real.train_images.shape == (60_000, 28, 28) and real.train_images.dtype == np.uint8
    assert real.test_images.shape == (10_000, 28, 28)
    assert real.train_labels.dtype == np.int64
    assert np.bincount(real.train_labels).tolist() == [6000] * 10
    assert np.bincount(real.test_labels).tolist() == [1000] * 10
    assert 0 < real.train_images.mean() < 255


def test_split_is_stratified_disjoint_and_deterministic(real):
    a = fm.split_test(real.test_images, real.test_labels)
    b = fm.split_test(real.test_images, real.test_labels)
    assert len(a.val_labels) == 1000 and len(a.test_labels) == 9000
    assert np.bincount(a.val_labels).tolist() == [100] * 10
    assert np.bincount(a.test_labels).tolist() == [900] * 10
    assert np.array_equal(a.val_images, b.val_images) and np.array_equal(a.test_labels, b.test_labels)
    # Disjoint: no validation image appears among the test images (by exact pixel content).
    val_keys = {x.tobytes() for x in a.val_images}
    assert sum(x.tobytes() in val_keys for x in a.test_images) <= 2  # FMNIST has a few exact duplicates
    c = fm.split_test(real.test_images, real.test_labels, seed=1)
    assert not np.array_equal(a.val_labels, c.val_labels) or not np.array_equal(a.val_images, c.val_images)


def test_uncompressed_and_torchvision_raw_layout(tmp_path, copy_dir):
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in fm.FILES.values():
        (raw / stem).write_bytes(gzip.decompress((copy_dir / (stem + ".gz")).read_bytes()))
    data = fm.load_fashion_mnist(tmp_path / "tv")
    assert data.test_images.shape == (10_000, 28, 28)


def test_env_var_is_used(monkeypatch, copy_dir):
    monkeypatch.setenv(fm.ENV_VAR, str(copy_dir))
    assert fm.find_data_dir() == copy_dir


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", "not found"),
        ("truncated", "truncated"),
        ("bad_magic", "magic number"),
        ("bad_gzip", "corrupt"),
        ("bad_label", "outside 0..9"),
        ("bad_count", "items, expected"),
    ],
)
def test_damaged_files_give_one_line_errors(copy_dir, damage, message):
    labels = copy_dir / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    if damage == "missing":
        labels.unlink()
    elif damage == "truncated":
        labels.write_bytes(gzip.compress(bytes(raw[:5000])))
    elif damage == "bad_magic":
        raw[3] = 7
        labels.write_bytes(gzip.compress(bytes(raw)))
    elif damage == "bad_gzip":
        labels.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    elif damage == "bad_label":
        raw[100] = 42
        labels.write_bytes(gzip.compress(bytes(raw)))
    elif damage == "bad_count":
        raw[4:8] = (9999).to_bytes(4, "big")
        labels.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DeliberateError) as e:
        fm.load_fashion_mnist(copy_dir)
    text = str(e.value)
    assert message in text and "\n" not in text
    assert "t10k-labels" in text and ("apt-get" in text or "reinstall" in text)
