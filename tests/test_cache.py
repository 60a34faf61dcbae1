"""One shared round 0 (deliberate.cache): runs that would sample the same D_0 link it instead.

Real tiny runs (helpers.SMALL: 20 plain images in 2 shards, one guided round of 10) with and
without `cache`, compared byte for byte; the cache's entries damaged, symlinked and locked.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from deliberate.cache import RECORD, Round0Cache, key_of, round0_inputs
from deliberate.cli import main
from deliberate.config import from_dict, load_config
from deliberate.errors import DeliberateError
from deliberate.practice import PracticeConfig, run_practice
from deliberate.rounds import round_plan
from deliberate.rundir import RunDir
from tests.helpers import (
    CLASSES,
    CONFIGS,
    SMALL,
    needs_data,
    needs_transformers,
    tiny_backend,
    tiny_config,
)

DP = [*SMALL, "practice.branch_outs=false"]
STATIC = ["practice.initial=30", "practice.max_images=30", "practice.per_round=0",
          "guidance.omega=0.0"]  # fmt: skip


def run(generator, out: Path, *extra: str, cache: Path | None = None) -> dict:
    sets = [*DP, *extra, *([f"cache={cache}"] if cache else [])]
    return run_practice(tiny_config(generator, *sets), out, progress=False)


def pool_files(run_dir: Path) -> dict[str, bytes]:
    pool = run_dir / "pool"
    return {p.relative_to(pool).as_posix(): p.read_bytes() for p in pool.rglob("*") if p.is_file()}


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("seconds_")} for r in rows]


def assert_same_result(ref: Path, out: Path) -> None:
    """Pool bytes (shards, manifest, columns, pool.json), metrics and final weights."""
    assert pool_files(out) == pool_files(ref)
    assert metrics(out) == metrics(ref)
    a, b = (
        torch.load(d / "checkpoint.pt", weights_only=True)["trainer"]["ema"] for d in (ref, out)
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def entry_of(cache: Path) -> Path:
    (entry,) = cache.glob("round0-*")
    return entry


def entry_verifies(entry: Path) -> bool:
    shards = json.loads((entry / "entry.json").read_text())["shards"]
    return all(hashlib.sha256((entry / "shards" / s["name"]).read_bytes()).hexdigest()
               == s["sha256"] for s in shards)  # fmt: skip


def lookup(cache: Path, made_for: Path):
    """What a run would find in `cache`, for the key and inputs of the entry in `made_for`."""
    entry = json.loads((entry_of(made_for) / "entry.json").read_text())
    return Round0Cache(cache).lookup(entry["key"], entry["inputs"])


@pytest.fixture(scope="module")
def ref(tmp_path_factory, generator):
    out = tmp_path_factory.mktemp("ref") / "run"
    run(generator, out)
    return out


@pytest.fixture(scope="module")
def shared(tmp_path_factory, generator):
    """A cache filled by a first run (a miss) and used by a second (a hit)."""
    root = tmp_path_factory.mktemp("shared")
    first = run(generator, root / "first", cache=root / "cache")
    second = run(generator, root / "second", cache=root / "cache")
    return {"root": root, "cache": root / "cache", "summaries": (first, second)}


@needs_data
def test_a_hit_gives_the_same_bytes_links_the_entry_and_is_recorded(ref, shared):
    root, cache = shared["root"], shared["cache"]
    for name in ("first", "second"):
        assert_same_result(ref, root / name)  # a miss and a hit: both the run without cache
    first, second = (json.loads((root / n / RECORD).read_text()) for n in ("first", "second"))
    assert (first["reused_images"], first["published"], first["transfer"]) == (0, True, None)
    assert (second["reused_images"], second["published"]) == (20, False)
    assert second["transfer"] == "hardlink" and second["key"] == first["key"]
    # 20 images x 5 steps x 2 (CFG): spent by the first run only; the ledger counts the pool's
    # cost in both (what it took to make), so metrics stay identical.
    assert second["denoiser_evals_reused"] == 200
    s1, s2 = shared["summaries"]
    assert s1["round0_cached"] is False and s2["round0_cached"] is True
    assert s2["round0_cache"] == second and s1["denoiser_evals"] == s2["denoiser_evals"]
    entry = entry_of(cache)
    for name in ("shard-000000.npz", "shard-000001.npz"):  # one file, three names
        a, b, c = (p.stat() for p in (entry / "shards" / name, root / "first" / "pool" / "shards" /
                                      name, root / "second" / "pool" / "shards" / name))  # fmt: skip
        assert a.st_ino == b.st_ino == c.st_ino and a.st_nlink == 3
        assert a.st_mode & 0o777 == 0o444  # read-only: nothing writes into a shard
    assert entry_verifies(entry)  # training, report and summary never touched them
    assert sorted(p.name for p in cache.iterdir()) == sorted([entry.name, f".{entry.name}.lock"])


@needs_data
def test_a_static_and_a_dp_run_share_round_0_as_a_prefix(ref, shared, generator, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(shared["cache"], cache)  # DP's 20 images (copies: the shared entry stays)
    ref_static, static = tmp_path / "ref-static", tmp_path / "static"
    run(generator, ref_static, *STATIC)
    run(generator, static, *STATIC, cache=cache)  # links DP's 2 shards, samples a 3rd
    assert_same_result(ref_static, static)
    record = json.loads((static / RECORD).read_text())
    assert (record["images"], record["reused_images"], record["published"]) == (30, 20, True)
    shards = json.loads((entry_of(cache) / "entry.json").read_text())["shards"]
    assert [s["images"] for s in shards] == [10, 10, 10]  # the longer entry replaced it
    dp = tmp_path / "dp"
    run(generator, dp, cache=cache)  # the first 2 of static's 3 shards are DP's round 0
    assert_same_result(ref, dp)
    record = json.loads((dp / RECORD).read_text())
    assert (record["images"], record["reused_images"], record["published"]) == (20, 20, False)


def key(*overrides: str, backend=None) -> str:
    cfg = load_config(PracticeConfig, CONFIGS / "tiny.yaml", list(overrides))
    backend = backend or tiny_backend(seed=1)
    plan = lambda n: round_plan(backend.num_classes, n, cfg.seed, 0)  # noqa: E731
    return key_of(round0_inputs(cfg, backend, plan))


def test_the_key_is_what_decides_round_0_and_nothing_else():
    base = key()
    for same in ("practice.initial=60", "practice.per_round=0", "guidance.omega=0.3",
                 "learner.iterations=7", "practice.oversample=2", "cache=/elsewhere",
                 "generator.path=/another/copy"):  # fmt: skip
        assert key(same) == base, same
    for other in ("seed=1", "generator.sampler.steps=4", "generator.sampler.cfg=1.0",
                  "generator.batch_size=10", "threads=2"):  # fmt: skip
        assert key(other) != base, other
    # Two untrained generators share an identifier ("untrained"): the weights tell them apart.
    assert key(backend=tiny_backend(seed=2)) != base


@needs_transformers
def test_the_key_of_a_latent_generator_covers_its_prompts_and_dtype(sd_dir):
    from deliberate.generators import load_backend

    def latent_key(**latent):
        cfg = from_dict(
            PracticeConfig,
            {"generator": {"kind": "stable_diffusion", "path": str(sd_dir), "latent": latent}},
        )
        backend = load_backend(cfg.generator, classes=CLASSES)  # fmt: skip
        return key_of(round0_inputs(cfg, backend, lambda n: round_plan(3, n, 0, 0)))

    base = latent_key()
    assert latent_key() == base  # loaded again: the same weights, prompts and key
    assert latent_key(prompt="{name}") != base
    assert latent_key(dtype="bfloat16") != base  # bf16 weights hash through their raw bytes


@needs_data
def test_a_different_seed_misses_and_adds_its_own_entry(shared, generator, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(shared["cache"], cache)
    run(generator, tmp_path / "run", "seed=1", cache=cache)
    record = json.loads((tmp_path / "run" / RECORD).read_text())
    assert record["reused_images"] == 0 and record["published"]
    assert len(list(cache.glob("round0-*"))) == 2


def flip_a_byte(path: Path) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGES = {
    "a flipped byte": lambda e: flip_a_byte(e / "shards" / "shard-000001.npz"),
    "a missing shard": lambda e: (e / "shards" / "shard-000001.npz").unlink(),
    "a torn entry.json": lambda e: (e / "entry.json").write_bytes(
        (e / "entry.json").read_bytes()[:100]),
    "no entry.json": lambda e: (e / "entry.json").unlink(),
    "another shard list": lambda e: (e / "entry.json").write_text(
        (e / "entry.json").read_text().replace("shard-000001", "shard-000007")),
}  # fmt: skip


@needs_data
@pytest.mark.parametrize("damage", list(DAMAGES), ids=list(DAMAGES))
def test_a_damaged_entry_is_ignored_with_one_line(damage, shared, tmp_path, capfd):
    cache = tmp_path / "cache"
    shutil.copytree(shared["cache"], cache)
    DAMAGES[damage](entry_of(cache))
    assert lookup(cache, shared["cache"]) == (None, True)
    err = capfd.readouterr().err
    assert err.startswith("deliberate: note: the round-0 cache entry ") and err.count("\n") == 1


@needs_data
def test_a_damaged_entry_is_rebuilt_by_the_next_run(ref, shared, generator, tmp_path, capfd):
    cache = tmp_path / "cache"
    shutil.copytree(shared["cache"], cache)
    flip_a_byte(entry_of(cache) / "shards" / "shard-000000.npz")
    run(generator, tmp_path / "run", cache=cache)
    assert "is damaged (shard-000000.npz is not the file" in capfd.readouterr().err
    assert_same_result(ref, tmp_path / "run")  # the damaged shard was never used
    record = json.loads((tmp_path / "run" / RECORD).read_text())
    assert record["reused_images"] == 0 and record["published"]
    assert entry_verifies(entry_of(cache)) and lookup(cache, cache)[0] is not None
    assert not list(cache.glob(".old-*")) and not list(cache.glob(".tmp-*"))


@needs_data
def test_a_symlink_in_the_cache_is_refused_and_never_followed(shared, generator, tmp_path, capsys):
    outside = tmp_path / "outside.npz"
    outside.write_bytes(b"not yours")
    for where in ("shard", "entry", "lock"):
        cache = tmp_path / where / "cache"
        shutil.copytree(shared["cache"], cache)
        entry = entry_of(cache)
        if where == "shard":
            (entry / "shards" / "shard-000000.npz").unlink()
            (entry / "shards" / "shard-000000.npz").symlink_to(outside)
        elif where == "entry":
            shutil.move(entry, tmp_path / where / "real-entry")
            entry.symlink_to(tmp_path / where / "real-entry", target_is_directory=True)
        else:
            (cache / f".{entry.name}.lock").unlink()
            (cache / f".{entry.name}.lock").symlink_to(outside)
        out = tmp_path / where / "run"
        sets = [f"--set={s}" for s in [f"generator.path={generator}", *DP]]
        code = main(["run", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet",
                     "--cache", str(cache), *sets])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith("deliberate: error: ") and "a symlink, not a plain" in err
        assert outside.read_bytes() == b"not yours"
        assert not (out / "pool" / "staging").exists() or not any(
            (out / "pool" / "staging").iterdir()
        )


@needs_data
def test_a_copy_with_one_line_when_hard_links_fail(ref, shared, generator, tmp_path, monkeypatch,
                                                   capfd):  # fmt: skip
    def no_links(src, dst, *, follow_symlinks=True):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    cache = tmp_path / "cache"
    shutil.copytree(shared["cache"], cache)
    monkeypatch.setattr(os, "link", no_links)
    run(generator, tmp_path / "run", cache=cache)
    err = capfd.readouterr().err
    assert err.count("hard links from") == 1 and "copied 2 cached shard(s)" in err
    assert_same_result(ref, tmp_path / "run")
    record = json.loads((tmp_path / "run" / RECORD).read_text())
    assert (record["reused_images"], record["transfer"]) == (20, "copy")
    name = "shards/shard-000000.npz"
    assert (entry_of(cache) / name).stat().st_ino != (
        tmp_path / "run" / "pool" / name
    ).stat().st_ino


def test_a_second_run_waits_for_the_one_filling_the_entry(tmp_path, capfd):
    cache, key_ = Round0Cache(tmp_path / "cache"), "ab" * 32
    ready, released = tmp_path / "ready", tmp_path / "released"
    pid = os.fork()
    if pid == 0:  # the first run: holds the entry's lock for 1.5 s
        code = 1
        try:
            with cache.lock(key_):
                ready.touch()
                time.sleep(1.5)
                released.write_text(str(time.time()))
            code = 0
        finally:
            os._exit(code)
    while not ready.exists():
        time.sleep(0.01)
    with cache.lock(key_, wait=False) as held:  # torchrun's rank 0 does not wait
        assert held is False
    with cache.lock(key_) as held:  # a second run waits, then holds it
        got = time.time()
        assert held
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert got >= float(released.read_text())
    err = capfd.readouterr().err
    assert err.count("another run is filling the round-0 cache entry") == 1


def test_a_run_resumes_with_another_cache_and_sweeps_take_the_flag(tmp_path, capsys):
    rd, cfg = RunDir(tmp_path / "run"), {"seed": 0, "cache": "/a"}
    rd.claim(cfg)
    rd.claim({**cfg, "cache": "/b"})  # where the shared files are is not the run's config
    rd.claim({**cfg, "cache": None})
    with pytest.raises(DeliberateError, match="seed"):
        rd.claim({**cfg, "seed": 1})
    demo = Path(__file__).resolve().parent.parent / "configs" / "fmnist" / "demo.yaml"
    assert main(["sweep", str(demo), "--out", str(tmp_path / "s"), "--dry-run",
                 "--cache", str(tmp_path / "c")]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(f'cache="{tmp_path / "c"}"' in line for line in lines)


@needs_data
def test_a_cache_path_that_is_a_file_is_refused_before_anything_is_written(generator, tmp_path,
                                                                         capsys):  # fmt: skip
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "run"
    sets = [f"--set={s}" for s in [f"generator.path={generator}", *DP]]
    code = main(["run", str(CONFIGS / "tiny.yaml"), "--out", str(out), "--quiet",
                 "--cache", str(tmp_path / "file"), *sets])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is not a folder" in err
    assert not out.exists()
