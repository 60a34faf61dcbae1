"""Handed-over folders stay closed (issue 14): crafted pools and run folders get one line, exit 2.

Every case damages a copy of a good folder (a pool built by appending random images, or a real
run killed mid-training), runs the real command and checks: exit code 2, one line on stderr that
names the culprit, no traceback, and not one byte changed anywhere under the test's folder
(the folder, the files outside it that a symlink points at, and where the output would go).
Cases are tables; `test_the_tables_count_the_distinct_bad_inputs` counts them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from deliberate.cli import main
from deliberate.data.pool import Pool
from deliberate.errors import DeliberateError
from deliberate.rounds import load_twins
from tests.helpers import cli_args, fork_run, make_generator, needs_data

SHAPE, CLASSES = (8, 8), ["a", "b", "c"]


@pytest.fixture(autouse=True)
def no_hang():
    """A FIFO read without care blocks forever: fail the test instead of hanging the suite."""

    def hung(signum, frame):
        raise TimeoutError("the command hung (a FIFO opened for reading?)")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def make_pool(root: Path, sizes=(5, 4, 6)) -> Path:
    """A pool of random 8x8 images, one shard per size."""
    pool = Pool.create(root, {"class_names": CLASSES})
    rng = np.random.default_rng(0)
    for n in sizes:
        first = len(pool)
        images = rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8)
        pool.append(images, [{"label": (first + i) % 3, "seed": first + i} for i in range(n)])
    return root


def snapshot(root: Path) -> dict:
    """Every entry under root, never followed: files by content, links by target, FIFOs by kind."""
    out = {}
    for top, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(top, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                out[os.path.relpath(path, root)] = ("link", os.readlink(path))
            elif stat.S_ISREG(mode):
                out[os.path.relpath(path, root)] = ("file", Path(path).read_bytes())
            else:
                out[os.path.relpath(path, root)] = ("kind", stat.S_IFMT(mode))
    return out


def refused(capsys, argv: list, expect: str) -> None:
    """Run the CLI; it must exit 2 with exactly one line on stderr containing `expect`."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    assert err.startswith("deliberate: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and expect in err, err


# -- damage helpers -----------------------------------------------------------------------------


def link(path: Path, target: Path) -> None:
    """Replace `path` by a symlink to `target` (which receives path's old content, if any)."""
    if path.is_dir() and not path.is_symlink():
        shutil.copytree(path, target)
        shutil.rmtree(path)
    elif path.exists():
        shutil.copy(path, target)
        path.unlink()
    path.symlink_to(target)


def fifo(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def device(path: Path) -> None:
    """A character device node (what /dev/null is) in place of `path`; skips where not allowed."""
    path.unlink(missing_ok=True)
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("cannot create a device node here")


def npy(shape, dtype, data: bytes, version=(1, 0)) -> bytes:
    """An .npy member whose header says (shape, dtype), followed by `data`, whatever its size."""
    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": shape}  # fmt: skip
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue() + data


def shard_members(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def write_shard(path: Path, members: dict, method=zipfile.ZIP_STORED) -> None:
    """A shard with these members: arrays (written as .npy) or raw .npy bytes."""
    with zipfile.ZipFile(path, "w", method) as z:
        for name, value in members.items():
            if isinstance(value, np.ndarray):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, value)
                value = buf.getvalue()
            z.writestr(f"{name}.npy", value)


def patch_shard(path: Path, method=zipfile.ZIP_STORED, **changes) -> None:
    """Rewrite shard `path` with some members replaced (None: dropped)."""
    members = {**shard_members(path), **changes}
    write_shard(path, {k: v for k, v in members.items() if v is not None}, method)


def lie_about_size(path: Path, member: str, size: int) -> None:
    """Make the zip directory claim `size` uncompressed bytes for `member` (a zip bomb's claim)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")  # each central directory entry
    while at >= 0:
        name_len = int.from_bytes(data[at + 28 : at + 30], "little")
        if data[at + 46 : at + 46 + name_len] == f"{member}.npy".encode():
            data[at + 24 : at + 28] = size.to_bytes(4, "little")
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


def ids_claiming(n: int):
    return lambda s: patch_shard(s, ids=npy((n,), np.int64, np.arange(5).tobytes()))


def manifest_line(root: Path, line: bytes, replace: bool = False) -> None:
    """Insert `line` before the manifest's 4th line (or put it in that line's place)."""
    data = (root / "manifest.jsonl").read_bytes().splitlines(True)
    rest = data[4:] if replace else data[3:]
    (root / "manifest.jsonl").write_bytes(b"".join(data[:3]) + line + b"".join(rest))


def relabel_row_3(root: Path) -> None:
    row = json.loads((root / "manifest.jsonl").read_bytes().splitlines()[3])
    manifest_line(root, (json.dumps({**row, "label": 9}) + "\n").encode(), replace=True)


def staged_symlink(root: Path, outside: Path) -> None:
    (root / "staging").mkdir()
    shutil.copy(root / "shards" / "shard-000002.npz", outside / "s3.npz")
    (root / "staging" / "shard-000003.npz").symlink_to(outside / "s3.npz")


def planted(path: Path, outside: Path) -> None:
    """A symlink at `path` to a file outside, which must survive untouched."""
    (outside / "keep").write_bytes(b"keep")
    path.symlink_to(outside / "keep")


def header(root: Path, value) -> None:
    (root / "pool.json").write_text(json.dumps(value))


# -- pools --------------------------------------------------------------------------------------

S0, S1, S2 = (f"shards/shard-00000{j}.npz" for j in range(3))

# (id, damage(pool root, outside folder), expected words). S2 is the last shard: the pool's open
# reads its header; S0 and S1 are read when the export reaches them.
POOL_CASES = [
    # Symlinks, FIFOs and devices among the entries a pool opens.
    ("manifest-symlink", lambda r, o: link(r / "manifest.jsonl", o / "m.jsonl"), "manifest.jsonl is a symlink"),
    ("manifest-symlink-dangling", lambda r, o: (r / "manifest.jsonl").unlink() or (r / "manifest.jsonl").symlink_to(o / "nothing"), "manifest.jsonl is a symlink"),
    ("manifest-fifo", lambda r, o: fifo(r / "manifest.jsonl"), "manifest.jsonl is a FIFO"),
    ("manifest-device", lambda r, o: device(r / "manifest.jsonl"), "manifest.jsonl is a device"),
    ("manifest-folder", lambda r, o: (r / "manifest.jsonl").unlink() or (r / "manifest.jsonl").mkdir(), "manifest.jsonl is a folder"),
    ("header-symlink", lambda r, o: link(r / "pool.json", o / "pool.json"), "pool.json is a symlink"),
    ("header-fifo", lambda r, o: fifo(r / "pool.json"), "pool.json is a FIFO"),
    ("lock-symlink-dangling", lambda r, o: (r / ".lock").unlink() or (r / ".lock").symlink_to(o / "created"), ".lock is a symlink"),
    ("lock-symlink", lambda r, o: link(r / ".lock", o / "lock"), ".lock is a symlink"),
    ("lock-fifo", lambda r, o: fifo(r / ".lock"), ".lock is a FIFO"),
    ("shards-symlink", lambda r, o: link(r / "shards", o / "shards"), "shards is a symlink"),
    ("shards-a-file", lambda r, o: shutil.rmtree(r / "shards") or (r / "shards").write_bytes(b"x"), "shards is a file, not a plain folder"),
    ("shard-symlink", lambda r, o: link(r / S1, o / "s1.npz"), "shard-000001.npz is a symlink"),
    ("last-shard-symlink", lambda r, o: link(r / S2, o / "s2.npz"), "shard-000002.npz is a symlink"),
    ("shard-fifo", lambda r, o: fifo(r / S1), "shard-000001.npz is a FIFO"),
    ("shard-device", lambda r, o: device(r / S2), "shard-000002.npz is a device"),
    ("shard-folder", lambda r, o: (r / S2).unlink() or (r / S2).mkdir(), "shard-000002.npz is a folder"),
    ("temp-shard-symlink", lambda r, o: planted(r / "shards" / ".shard-000003.npz.9.tmp", o), ".shard-000003.npz.9.tmp is a symlink"),
    ("temp-header-symlink", lambda r, o: planted(r / ".pool.json.9.tmp", o), ".pool.json.9.tmp is a symlink"),
    ("staging-symlink", lambda r, o: (o / "staging").mkdir() or (r / "staging").symlink_to(o / "staging"), "staging is a symlink"),
    ("staged-shard-symlink", lambda r, o: staged_symlink(r, o), "shard-000003.npz is a symlink"),
    # Shard headers that would allocate more than the file holds, or disagree with the pool.
    ("ids-claim-1e11", lambda r, o: ids_claiming(10**11)(r / S2), "ids.npy's header claims int64 (100000000000,)"),
    ("ids-claim-1e11-middle", lambda r, o: ids_claiming(10**11)(r / S1), "ids.npy's header claims int64 (100000000000,)"),
    ("ids-claim-negative", lambda r, o: ids_claiming(-5)(r / S2), "ids.npy's header claims"),
    ("ids-2d", lambda r, o: patch_shard(r / S2, ids=np.zeros((6, 2), np.int64)), "its ids header claims shape (6, 2)"),
    ("ids-empty", lambda r, o: patch_shard(r / S2, ids=np.zeros(0, np.int64)), "its ids header claims shape (0,)"),
    ("ids-float", lambda r, o: patch_shard(r / S2, ids=np.arange(9, 15, dtype=np.float64)), "its ids are float64"),
    ("labels-longer", lambda r, o: patch_shard(r / S2, labels=np.zeros(7, np.int64)), "its labels are (7,), not (6,)"),
    ("labels-outside-classes", lambda r, o: patch_shard(r / S2, labels=np.full(6, 7, np.int64)), "its labels leave 0..2"),
    ("labels-negative", lambda r, o: patch_shard(r / S2, labels=np.full(6, -1, np.int64)), "its labels leave 0..2"),
    ("labels-missing", lambda r, o: patch_shard(r / S2, labels=None), "labels.npy"),
    ("images-wrong-shape", lambda r, o: patch_shard(r / S1, images=np.zeros((4, 9, 9), np.uint8)), "its images are (4, 9, 9), not (4, 8, 8); the pool holds (8, 8) images"),
    ("images-colour", lambda r, o: patch_shard(r / S0, images=np.zeros((5, 8, 8, 3), np.uint8)), "its images are (5, 8, 8, 3)"),
    ("images-float", lambda r, o: patch_shard(r / S0, images=np.zeros((5, 8, 8), np.float32)), "its images are float32"),
    ("images-claim-huge", lambda r, o: patch_shard(r / S1, images=npy((4 * 10**9, 8, 8), np.uint8, bytes(256))), "images.npy's header claims uint8 (4000000000, 8, 8)"),
    ("images-truncated", lambda r, o: patch_shard(r / S1, images=npy((4, 8, 8), np.uint8, bytes(100))), "(256 bytes) but it holds 100 bytes"),
    ("images-object", lambda r, o: patch_shard(r / S1, images=npy((4,), object, bytes(32))), "images.npy holds Python objects"),
    ("images-missing", lambda r, o: patch_shard(r / S0, images=None), "images.npy"),
    ("npy-version-3", lambda r, o: patch_shard(r / S1, images=npy((4, 8, 8), np.uint8, bytes(256), (2, 0)).replace(b"\x02\x00", b"\x03\x00", 1)), "images.npy is .npy version (3, 0)"),
    ("npy-bad-magic", lambda r, o: patch_shard(r / S2, ids=b"NOTNUMPY" + bytes(100)), "corrupt"),
    ("rows-claim-huge", lambda r, o: patch_shard(r / S2, rows=npy((2**40,), np.uint8, bytes(10))), "rows.npy's header claims uint8 (1099511627776,)"),
    ("rows-not-objects", lambda r, o: patch_shard(r / S2, rows=np.frombuffer(b"[1, 2, 3, 4, 5, 6]", np.uint8)), "its rows are not 6 JSON objects"),
    ("rows-not-json", lambda r, o: patch_shard(r / S2, rows=np.frombuffer(b"{garbage", np.uint8)), "JSONDecodeError"),
    ("deflate-bomb-claim", lambda r, o: patch_shard(r / S2, zipfile.ZIP_DEFLATED) or lie_about_size(r / S2, "labels", 2**31), "labels.npy claims 2,147,483,648 bytes from"),
    ("bzip2-member", lambda r, o: patch_shard(r / S2, zipfile.ZIP_BZIP2), "compressed with zip method 12"),
    ("stored-size-lie", lambda r, o: lie_about_size(r / S2, "ids", 2**31), "ids.npy claims 2,147,483,648 bytes, more than the file holds"),
    # The manifest and the header, read with bounded memory.
    ("manifest-line-2mb", lambda r, o: manifest_line(r, b'{"pad": "' + b"x" * 2**21 + b'"}\n'), "manifest.jsonl line 4 is over 1,048,576 bytes"),
    ("manifest-line-2mb-no-newline", lambda r, o: (r / "manifest.jsonl").write_bytes(b"x" * 2**21), "manifest.jsonl line 1 is over"),
    ("header-over-1mb", lambda r, o: header(r, {"format": "deliberate-pool", "version": 1, "meta": {}, "pad": "x" * 2**20}), "pool.json is over 1,048,576 bytes"),
    ("header-no-meta", lambda r, o: header(r, {"format": "deliberate-pool", "version": 1}), "pool.json holds no meta mapping"),
    ("header-meta-list", lambda r, o: header(r, {"format": "deliberate-pool", "version": 1, "meta": [1]}), "pool.json holds no meta mapping"),
    ("header-bad-shape", lambda r, o: header(r, {"format": "deliberate-pool", "version": 1, "meta": {"image_shape": "8x8"}}), "image_shape must be [H, W] or [H, W, C]"),
    ("header-bad-classes", lambda r, o: header(r, {"format": "deliberate-pool", "version": 1, "meta": {"class_names": [1, 2]}}), "class_names must be a list of strings"),
    ("header-a-list", lambda r, o: header(r, [1, 2]), "is not a deliberate pool header"),
    ("header-not-utf8", lambda r, o: (r / "pool.json").write_bytes(b"\xff\xfe{"), "pool.json is unreadable"),
]  # fmt: skip


@pytest.mark.parametrize(
    "damage,expect", [c[1:] for c in POOL_CASES], ids=[c[0] for c in POOL_CASES]
)
def test_a_damaged_pool_is_refused_and_nothing_changes(damage, expect, tmp_path, capsys):
    root, outside = make_pool(tmp_path / "pool"), tmp_path / "outside"
    outside.mkdir()
    damage(root, outside)
    before = snapshot(tmp_path)
    refused(capsys, ["export", root, "--out", tmp_path / "out.npz"], expect)
    assert snapshot(tmp_path) == before  # outside files byte-identical, no .lock target, no out


def test_a_symlinked_manifest_is_never_written_through_by_generate(generator, tmp_path, capsys):
    """`generate` appends to a pool; through a symlinked manifest it would write outside."""
    root = tmp_path / "pool"
    assert main(["generate", "--per-class", "1", "--classes", "0", "--steps", "1", "--out",
                 str(root), "--generator", generator, "--quiet"]) == 0  # fmt: skip
    link(root / "manifest.jsonl", tmp_path / "elsewhere.jsonl")
    (root / ".lock").unlink()
    (root / ".lock").symlink_to(tmp_path / "lock-target")
    capsys.readouterr()
    before = snapshot(tmp_path)
    refused(capsys, ["generate", "--per-class", "2", "--classes", "0", "--steps", "1", "--out",
                     root, "--generator", generator, "--quiet"], "is a symlink")  # fmt: skip
    assert snapshot(tmp_path) == before and not (tmp_path / "lock-target").exists()


# Damage a pool can recover from by itself (shards are the truth): repaired, nothing lost.
REPAIRED = [
    ("manifest-line-an-array", lambda r: manifest_line(r, b"[1, 2]\n")),
    ("manifest-label-outside-classes", relabel_row_3),
    ("manifest-shard-name-leaves-the-pool", lambda r: (r / "manifest.jsonl").write_bytes((r / "manifest.jsonl").read_bytes().replace(b"shard-000001.npz", b"../../etc/passwd"))),
]  # fmt: skip


@pytest.mark.parametrize("damage", [c[1] for c in REPAIRED], ids=[c[0] for c in REPAIRED])
def test_a_manifest_the_shards_contradict_is_rebuilt_from_them(damage, tmp_path):
    root = make_pool(tmp_path / "pool")
    good = (root / "manifest.jsonl").read_bytes()
    damage(root)
    pool = Pool(root)
    assert pool.verify() == 15 and (root / "manifest.jsonl").read_bytes() == good


def test_paths_read_from_a_sweep_file_stay_inside_it(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"points": [{"dir": "../elsewhere"}]}))
    before = snapshot(tmp_path)
    refused(capsys, ["report", sweep, "--out", tmp_path / "report"], "leads outside the folder")
    assert snapshot(tmp_path) == before


# -- run folders --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """A tiny generator and Fashion-MNIST unzipped: the "generator.path=..,data_dir=.." pair."""
    return make_generator(tmp_path_factory)


@pytest.fixture(scope="module")
def generator(sets):
    """The tiny generator's folder (overrides conftest's)."""
    return sets.split(",")[0].split("=", 1)[1]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, sets):
    """A run killed mid-training (pool of 2 shards, checkpoint at step 20)."""
    out = tmp_path_factory.mktemp("partial") / "run"
    assert fork_run(cli_args(out, sets), "train.step:25") == -9
    return out


def checkpoint(run: Path, change) -> None:
    """Rewrite checkpoint.pt as `change(the real one)` returns it."""
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save(change(ckpt), run / "checkpoint.pt")


def _set(path: list, value):
    def change(ckpt):
        node = ckpt
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return ckpt

    return change


def fork_symlink(run: Path, outside: Path) -> None:
    (run / "branches" / "round-0").mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "checkpoint.pt", outside / "fork.pt")
    (run / "branches" / "round-0" / "fork.pt").symlink_to(outside / "fork.pt")


def outside_folder(path: Path, outside: Path) -> None:
    """`path` (a run's subfolder) as a symlink to a folder outside, with the same content."""
    path.mkdir(exist_ok=True)
    link(path, outside / path.name)


def only_config(run: Path) -> None:
    """A folder that was claimed and never got further: config.yaml, nothing else."""
    for entry in run.iterdir():
        if entry.name not in ("config.yaml", "checkpoint.pt"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


WRONG = "has the wrong structure"
# 9 * 8**7 (19 million) values from 300 bytes, were it ever expanded.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 8)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True)
)
# (id, damage(run folder, outside folder), expected words)
def damaged_copy(interrupted: Path, tmp_path: Path, damage) -> tuple[Path, dict]:
    """A copy of the interrupted run, damaged (with tmp/outside as a symlink target), and the
    snapshot of tmp_path taken after the damage: nothing may change it from then on."""
    run, outside = tmp_path / "run", tmp_path / "outside"
    shutil.copytree(interrupted, run, symlinks=True)
    outside.mkdir()
    damage(run, outside)
    return run, snapshot(tmp_path)


RUN_CASES = [
    # A checkpoint.pt of the wrong structure: refused before the pool is created or repaired.
    ("ckpt-no-trainer", lambda r, o: checkpoint(r, _set(["trainer"], KeyError)), WRONG),
    ("ckpt-no-trainer-fresh-folder", lambda r, o: checkpoint(r, _set(["trainer"], KeyError)) or only_config(r), WRONG),
    ("ckpt-a-tensor", lambda r, o: checkpoint(r, lambda c: torch.randn(100)), "a Tensor, not a dict"),
    ("ckpt-a-list", lambda r, o: checkpoint(r, lambda c: [1, 2, 3]), "a list, not a dict"),
    ("ckpt-trainer-a-tensor", lambda r, o: checkpoint(r, _set(["trainer"], torch.zeros(3))), WRONG),
    ("ckpt-no-ema", lambda r, o: checkpoint(r, _set(["trainer", "ema"], KeyError)), "KeyError: 'ema'"),
    ("ckpt-weights-wrong-shape", lambda r, o: checkpoint(r, lambda c: {**c, "trainer": {**c["trainer"], "model": {k: torch.zeros(1) for k in c["trainer"]["model"]}}}), WRONG),
    ("ckpt-no-rng", lambda r, o: checkpoint(r, _set(["rng"], KeyError)), "KeyError: 'rng'"),
    ("ckpt-rng-floats", lambda r, o: checkpoint(r, _set(["rng"], torch.zeros(5))), WRONG),
    ("ckpt-loop-unknown-key", lambda r, o: checkpoint(r, _set(["loop", "hack"], 1)), "unexpected keyword argument 'hack'"),
    ("ckpt-loop-fork-path", lambda r, o: checkpoint(r, _set(["loop", "forks"], [["../../../tmp/x", 1, 2]])), "its loop state has a field of the wrong type"),
    ("ckpt-loop-round-text", lambda r, o: checkpoint(r, _set(["loop", "round"], "1")), "its loop state has a field of the wrong type"),
    ("ckpt-loop-ledger-text", lambda r, o: checkpoint(r, _set(["loop", "ledger"], {"x": "y"})), "its loop state has a field of the wrong type"),
    ("ckpt-wrong-with-temp-files", lambda r, o: checkpoint(r, _set(["trainer"], KeyError)) or (r / ".checkpoint.pt.77.tmp").write_bytes(b"half") or (r / "pool" / "shards" / ".shard-000002.npz.77.tmp").write_bytes(b"half"), WRONG),
    ("ckpt-wrong-with-torn-manifest", lambda r, o: checkpoint(r, _set(["trainer"], KeyError)) or (r / "pool" / "manifest.jsonl").write_bytes((r / "pool" / "manifest.jsonl").read_bytes()[:-30]), WRONG),
    # Symlinks and FIFOs among a run folder's entries, at any depth.
    ("ckpt-symlink", lambda r, o: link(r / "checkpoint.pt", o / "checkpoint.pt"), "checkpoint.pt is a symlink"),
    ("ckpt-fifo", lambda r, o: fifo(r / "checkpoint.pt"), "checkpoint.pt is a FIFO"),
    ("config-symlink", lambda r, o: link(r / "config.yaml", o / "config.yaml"), "config.yaml is a symlink"),
    ("config-fifo", lambda r, o: fifo(r / "config.yaml"), "config.yaml is a FIFO"),
    ("metrics-symlink", lambda r, o: link(r / "metrics.jsonl", o / "metrics.jsonl"), "metrics.jsonl is a symlink"),
    ("metrics-fifo", lambda r, o: fifo(r / "metrics.jsonl"), "metrics.jsonl is a FIFO"),
    ("pool-symlink", lambda r, o: link(r / "pool", o / "pool"), "pool is a symlink"),
    ("pool-manifest-symlink", lambda r, o: link(r / "pool" / "manifest.jsonl", o / "m.jsonl"), "manifest.jsonl is a symlink"),
    ("pool-lock-symlink", lambda r, o: (r / "pool" / ".lock").unlink() or (r / "pool" / ".lock").symlink_to(o / "created"), ".lock is a symlink"),
    ("twins-symlink", lambda r, o: outside_folder(r / "twins", o), "twins is a symlink"),
    ("branches-symlink", lambda r, o: outside_folder(r / "branches", o), "branches is a symlink"),
    ("budgets-symlink", lambda r, o: outside_folder(r / "budgets", o), "budgets is a symlink"),
    ("report-symlink", lambda r, o: outside_folder(r / "report", o), "report is a symlink"),
    ("fork-symlink", fork_symlink, "fork.pt is a symlink"),
    ("shard-symlink-in-run", lambda r, o: link(r / "pool" / "shards" / "shard-000001.npz", o / "s.npz"), "shard-000001.npz is a symlink"),
    # config.yaml read with bounded memory and the config loader's rules.
    ("config-over-1mb", lambda r, o: (r / "config.yaml").write_text("seed: 0\n" + "#" * 2**20), "config.yaml is over 1,048,576 bytes"),
    ("config-alias-bomb", lambda r, o: (r / "config.yaml").write_text(ALIAS_BOMB), "expands to more than 100,000 values"),
    ("config-a-date", lambda r, o: (r / "config.yaml").write_text((r / "config.yaml").read_text().replace("seed: 0", "seed: 2024-01-01")), "different config (seed: '2024-01-01' there, 0 here)"),
]  # fmt: skip


@needs_data
@pytest.mark.parametrize("damage,expect", [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_a_damaged_run_folder_is_refused_before_anything_is_written(
    damage, expect, interrupted, sets, tmp_path, capsys
):
    run, before = damaged_copy(interrupted, tmp_path, damage)
    refused(capsys, cli_args(run, sets), expect)
    assert snapshot(tmp_path) == before  # no pool created, no temp file cleaned, no repair


LEARNER_CASES = [
    ("learner-ckpt-symlink", lambda r, o: link(r / "checkpoint.pt", o / "c.pt"), "checkpoint.pt is a symlink"),
    ("learner-ckpt-fifo", lambda r, o: fifo(r / "checkpoint.pt"), "checkpoint.pt is a FIFO"),
    ("learner-ckpt-no-trainer", lambda r, o: checkpoint(r, _set(["trainer"], KeyError)), WRONG),
    ("learner-ckpt-a-tensor", lambda r, o: checkpoint(r, lambda c: torch.zeros(4)), WRONG),
    ("learner-config-symlink", lambda r, o: link(r / "config.yaml", o / "config.yaml"), "config.yaml is a symlink"),
]  # fmt: skip


@needs_data
@pytest.mark.parametrize(
    "damage,expect", [c[1:] for c in LEARNER_CASES], ids=[c[0] for c in LEARNER_CASES]
)
def test_generate_refuses_a_damaged_learner_before_creating_the_pool(
    damage, expect, interrupted, generator, tmp_path, capsys
):
    run, before = damaged_copy(interrupted, tmp_path, damage)
    refused(capsys, ["generate", "--per-class", "1", "--steps", "1", "--out", tmp_path / "pool",
                     "--generator", generator, "--learner", run, "--quiet"], expect)  # fmt: skip
    assert snapshot(tmp_path) == before


def test_the_tables_count_the_distinct_bad_inputs():
    """docs/reliability.md states this count (100), with test_validation.py's 57."""
    tables = POOL_CASES + REPAIRED + RUN_CASES + LEARNER_CASES
    singles = ["generate-symlink", "sweep-point-outside", "twins-plain", "twins-seeds"]  # tests
    ids = [c[0] for c in tables] + singles
    assert len(ids) == len(set(ids)) >= 100


@pytest.mark.parametrize("member,shape", [("plain", (10**11, 28, 28)), ("seeds", (10**11,))])
def test_a_hostile_twins_header_is_one_line_without_allocating(tmp_path, member, shape):
    """Twins are read with the shards' header checks: a header claiming 10^11 entries is refused
    before any array is allocated."""
    (tmp_path / "twins").mkdir()
    path = tmp_path / "twins" / "round-1.npz"
    ok = {"plain": np.zeros((2, 28, 28), np.uint8), "seeds": np.arange(2)}
    with zipfile.ZipFile(path, "w") as z:
        for name, a in ok.items():
            data = npy(shape, a.dtype, a.tobytes()) if name == member else npy(a.shape, a.dtype,
                                                                             a.tobytes())  # fmt: skip
            z.writestr(f"{name}.npy", data)
    with pytest.raises(DeliberateError, match=r"round-1.npz is unreadable \(.*header claims") as e:
        load_twins(tmp_path)
    assert "\n" not in str(e.value) and "delete it" in str(e.value)
