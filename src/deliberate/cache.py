"""One shared round 0: a content-addressed cache of D_0, the plain pool every run starts with.

Static runs, DP at ω = 0 and DP with guidance all sample round 0 the same way: plain images of
the seed plan, in batches of `generator.batch_size`. With `cache: DIR` (`deliberate run --cache
DIR`) the first run publishes its round-0 shards to DIR and every later run whose round 0 would
be the same bytes hard-links them into its own pool instead of sampling them:

    DIR/round0-KEY/entry.json       what the key hashes, and each shard's images, size, sha256
    DIR/round0-KEY/shards/*.npz     round 0's shards exactly as a run's pool holds them
    DIR/.round0-KEY.lock            held by the one run that reads or fills the entry
    DIR/.tmp-round0-KEY-PID/        an entry being written; renamed into place when complete

KEY hashes everything that decides round 0's bytes (`round0_inputs`): the generator's weights
and conditioning, its scheduler, the sampler settings, the classes and image shape, the batch
size (one shard per batch), the seed and the plan's layout, the device, thread count and
software versions. Not `practice.initial`: any prefix of the plan is the smaller pool, so a run
of N images takes every cached shard that is one of its own batches (a DP run with N = 1,000
the first 4 of a static run's 10 shards of 250), samples the rest, and publishes the longer
entry. An entry is verified (sizes and sha256) before use; a damaged one is ignored, with one
line, and rebuilt; a symlink, FIFO or device in it is refused (`deliberate.data.files`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from deliberate import distributed, faults
from deliberate.data.files import (
    _fsync_dir,
    _one_line,
    atomic_file,
    check_folder,
    check_regular,
    check_tree,
    link_or_copy,
    open_fd_inside,
    read_inside,
)
from deliberate.data.pool import Pool
from deliberate.data.staging import _shard_name
from deliberate.errors import DeliberateError

FORMAT = 2  # of entry.json and of the key's inputs; 2: since learner.inference_copy scores rounds
KEY_CHARS = 20  # of the key's hex digest in folder names (entry.json holds all 64)
ENTRY_LIMIT = 2**24  # bytes of entry.json: ~150 per shard
RECORD = "round0-cache.json"  # in the run folder: what this run's round 0 took from the cache


class _Damaged(Exception):
    """An entry whose content is not what its entry.json says: ignored and rebuilt."""


def note(msg: str) -> None:
    print(f"deliberate: note: {msg}", file=sys.stderr, flush=True)


# -- the key -------------------------------------------------------------------------------------


def _digest_tensors(h, value) -> None:
    """Feed tensors (nested in tuples, lists, dicts) to `h` by dtype, shape and raw bytes."""
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{t.dtype}{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            h.update(str(k).encode())
            _digest_tensors(h, value[k])
    elif isinstance(value, list | tuple):
        for v in value:
            _digest_tensors(h, v)
    else:
        h.update(repr(value).encode())


def weights_digest(backend) -> str:
    """sha256 of every weight and buffer the generator holds (its state_dict, in name order)."""
    h = hashlib.sha256()
    state = backend.state_dict() if hasattr(backend, "state_dict") else {}
    _digest_tensors(h, dict(state))
    return h.hexdigest()


def cond_digest(backend, cfg_scale: float) -> str:
    """sha256 of the conditioning of every class (prompt embeddings for a latent model, so the
    tokenizer and prompt template count), and of the unconditional one when CFG uses it."""
    h = hashlib.sha256()
    with torch.no_grad():
        _digest_tensors(h, backend.cond(torch.arange(backend.num_classes)))
        if cfg_scale > 0:
            _digest_tensors(h, backend.null_cond(1))
    return h.hexdigest()


def round0_inputs(cfg, backend, plan: Callable[[int], list]) -> dict:
    """Everything that decides the bytes of round 0's shards; `plan(n)` gives its first n pairs."""
    import diffusers
    import numpy
    import PIL

    from deliberate import __version__
    from deliberate.generators import pool_meta

    g = cfg.generator
    device = cfg.device
    if device == "cuda" and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.get_device_name()}"
    inputs = {
        "format": FORMAT,
        "generator": {
            "kind": g.kind,
            "identifier": backend.identifier,
            "weights_sha256": weights_digest(backend),
            "cond_sha256": cond_digest(backend, g.sampler.cfg),
            "scheduler": backend.scheduler_config,
            "latent": None if g.kind == "pixel" else asdict(g.latent),  # prompt, dtype, size
        },
        "pool_meta": pool_meta(backend),  # class names, image shape
        "sampler": asdict(g.sampler),
        "batch_size": g.batch_size,  # one shard per batch
        "seed": cfg.seed,
        "plan_sha256": hashlib.sha256(
            json.dumps(plan(2 * backend.num_classes)).encode()
        ).hexdigest(),
        "device": device,
        "threads": cfg.threads,
        "pool": asdict(cfg.pool),  # the codec and quality decide the shard bytes
        "software": {
            "pillow": PIL.__version__,  # encodes png/jpeg/webp shards
            "deliberate": __version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "numpy": numpy.__version__,
        },
    }
    return json.loads(json.dumps(inputs, sort_keys=True, default=str))


def key_of(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


# -- the cache folder ----------------------------------------------------------------------------


def _sha256_fd(fd: int) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 2**22):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


class Round0Cache:
    """The cache folder: entries by key, their locks, lookup (verified) and publishing."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def check(self) -> None:
        """Refuse a cache path that is not a folder (the path itself may be a symlink: it is
        the user's; nothing below it is followed)."""
        if (self.root.exists() and not self.root.is_dir()) or (
            self.root.is_symlink() and not self.root.exists()
        ):
            raise DeliberateError(
                f"cache {self.root} is not a folder (or a symlink to one); give a folder or a "
                "new path"
            )

    def entry_dir(self, key: str) -> Path:
        return self.root / f"round0-{key[:KEY_CHARS]}"

    @contextlib.contextmanager
    def lock(self, key: str, wait: bool = True) -> Iterator[bool]:
        """Hold the entry's lock (True); with wait=False, False at once when another run has it.

        A run holds it for the whole of its round 0, so a second run started meanwhile waits
        and then links what the first published. The kernel releases it when a run dies."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DeliberateError(
                f"cannot create the cache folder {self.root} ({e.strerror}); give a writable one"
            ) from None
        fd = open_fd_inside(self.root, f".round0-{key[:KEY_CHARS]}.lock", os.O_RDWR | os.O_CREAT)
        try:
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not wait:
                        yield False
                        return
                    if not told:
                        note(f"another run is filling the round-0 cache entry "
                             f"{self.entry_dir(key)}; waiting for it")  # fmt: skip
                        told = True
                    faults.raise_if_stopped()  # nothing of this run's round 0 exists yet
                    time.sleep(0.5)
            yield True
        finally:
            os.close(fd)

    def _clean(self, key: str) -> None:
        """Remove the temp and replaced folders a killed writer of this key left (lock held)."""
        k = key[:KEY_CHARS]
        for d in [*self.root.glob(f".tmp-round0-{k}-*"), *self.root.glob(f".old-round0-{k}-*")]:
            if check_folder(d):  # a symlink there is refused, never followed
                shutil.rmtree(d)

    def lookup(self, key: str, inputs: dict) -> tuple[list[dict] | None, bool]:
        """(the entry's verified shards, or None; whether an entry was there but damaged)."""
        d = self.entry_dir(key)
        if not check_folder(d):
            return None, False
        check_tree(d)  # only regular files and real folders, at any depth
        try:
            return self._verify(d, key, inputs), False
        except _Damaged as e:
            note(f"the round-0 cache entry {d} is damaged ({e}); ignoring it: this run samples "
                 "round 0 and replaces the entry")  # fmt: skip
            return None, True

    def _verify(self, d: Path, key: str, inputs: dict) -> list[dict]:
        if not check_regular(d / "entry.json"):
            raise _Damaged("no entry.json")
        try:
            entry = json.loads(read_inside(d, "entry.json", ENTRY_LIMIT))
        except ValueError as e:
            raise _Damaged(f"entry.json is unreadable: {_one_line(e)}") from None
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            raise _Damaged(f"entry.json is not a format-{FORMAT} entry")
        if entry.get("key") != key or entry.get("inputs") != inputs:
            raise _Damaged("entry.json is for another key")
        shards = entry.get("shards")
        fields = {"name": str, "images": int, "bytes": int, "sha256": str}
        if not isinstance(shards, list) or not shards:
            raise _Damaged("entry.json lists no shards")
        for j, s in enumerate(shards):
            if not isinstance(s, dict) or any(type(s.get(f)) is not t for f, t in fields.items()):
                raise _Damaged(f"entry.json's shard {j} is malformed")
            if s["name"] != _shard_name(j) or s["images"] < 1:
                raise _Damaged(f"entry.json's shard {j} is not {_shard_name(j)}")
        out = []
        for s in shards:
            try:
                fd = open_fd_inside(d, Path("shards") / s["name"])
            except FileNotFoundError:
                raise _Damaged(f"{s['name']} is missing") from None
            try:
                digest, size = _sha256_fd(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            if (digest, size) != (s["sha256"], s["bytes"]):
                raise _Damaged(f"{s['name']} is not the file entry.json describes (sha256)")
            out.append({**s, "inode": (st.st_dev, st.st_ino)})
        return out

    def publish(self, key: str, inputs: dict, pool: Pool, names: list[str], counts: list[int]):
        """Make `pool`'s round-0 shards `names` the entry (lock held): hard links into a temp
        folder, entry.json, then one rename; a shorter or damaged entry is replaced."""
        self._clean(key)
        tmp = self.root / f".tmp-round0-{key[:KEY_CHARS]}-{os.getpid()}"
        (tmp / "shards").mkdir(parents=True)
        shards, copied = [], False
        for name, count in zip(names, counts, strict=True):
            fd = open_fd_inside(pool.root, Path("shards") / name)
            try:
                digest, size = _sha256_fd(fd)
                copied |= not link_or_copy(pool.root / "shards" / name, fd, tmp / "shards" / name)
            finally:
                os.close(fd)
            os.chmod(tmp / "shards" / name, 0o444)  # read-only: nothing rewrites a shard
            shards.append({"name": name, "images": count, "bytes": size, "sha256": digest})
        if copied:
            note(f"hard links from {pool.root} to {self.root} failed (another filesystem?); "
                 "the cache entry holds copies")  # fmt: skip
        entry = {"format": FORMAT, "key": key, "inputs": inputs, "shards": shards}
        with atomic_file(tmp / "entry.json") as f:
            f.write(json.dumps(entry, indent=1).encode())
        _fsync_dir(tmp / "shards")
        faults.point("cache.entry_written")
        d = self.entry_dir(key)
        if check_folder(d):  # shorter or damaged: set aside, replaced, then removed
            old = self.root / f".old-round0-{key[:KEY_CHARS]}-{os.getpid()}"
            os.rename(d, old)
        os.rename(tmp, d)
        _fsync_dir(self.root)
        self._clean(key)


# -- a run's round 0 -----------------------------------------------------------------------------


def _inode(pool: Pool, j: int) -> tuple[int, int] | None:
    path = pool.root / "shards" / _shard_name(j)
    if not check_regular(path):
        return None
    st = path.lstat()
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def shared_round0(cfg, backend, pool: Pool, n: int, run_root: Path,
                  plan: Callable[[int], list]) -> Iterator[None]:  # fmt: skip
    """Round 0 of a run with `cache` set. Before the block: stage every cached shard that is
    one of this run's round-0 batches (`generate_into_pool`, in the block, commits them and
    samples only the rest). After it: record the reuse in RUN/round0-cache.json and publish
    the round if the cache held less of it. Under torchrun only rank 0 touches the cache.
    """
    if not distributed.is_main():
        yield
        return
    cache, size, s = Round0Cache(cfg.cache), cfg.generator.batch_size, cfg.generator.sampler
    cache.check()
    inputs = round0_inputs(cfg, backend, plan)
    key = key_of(inputs)
    wanted = [min(size, n - start) for start in range(0, n, size)]  # each round-0 shard's images
    with cache.lock(key, wait=distributed.world_size() == 1) as held:
        if not held:  # torchrun: the other ranks would time out while rank 0 waits
            note(f"another run holds {cache.entry_dir(key)}; this run samples its own round 0")
            yield
            return
        cache._clean(key)
        shards, damaged = cache.lookup(key, inputs)
        usable = []  # the entry's shards that are this run's batches 0, 1, ...
        for j, shard in enumerate(shards or []):
            if j >= len(wanted) or shard["images"] != wanted[j]:
                break
            usable.append(shard)
        copies = set()
        for j in range(len(pool.shards), len(usable)):  # a resumed round 0 has some already
            rel = Path("shards") / usable[j]["name"]
            linked = pool.stage_file(cache.entry_dir(key), rel, shard=j, inode=usable[j]["inode"])
            copies |= set() if linked else {j}
        if copies:
            note(f"hard links from {cache.root} to {pool.root} failed (another filesystem?); "
                 f"copied {len(copies)} cached shard(s) instead")  # fmt: skip
        faults.point("cache.linked")
        yield  # the caller's generate_into_pool commits the staged shards, samples the rest
        reused = [j for j, sh in enumerate(usable) if j in copies or _inode(pool, j) == sh["inode"]]
        cached = sum(sh["images"] for sh in shards or [])
        publish = shards is None or damaged or n > cached
        if not check_regular(run_root / RECORD):  # written once, when round 0 is complete
            images = sum(wanted[j] for j in reused)
            record = {
                "key": key, "cache": str(cache.root), "entry": cache.entry_dir(key).name,
                "images": n, "reused_images": images, "reused_shards": len(reused),
                "transfer": None if not reused else "copy" if copies else "hardlink",
                "published": bool(publish),
                "denoiser_evals_reused": images * s.steps * (2 if s.cfg else 1),
            }  # fmt: skip
            with atomic_file(run_root / RECORD) as f:
                f.write(json.dumps(record, indent=1).encode())
        if publish:
            cache.publish(key, inputs, pool, pool.shards[: len(wanted)], wanted)


def round0_summary(run_root: str | Path) -> dict:
    """What a run's summary records of its round 0's reuse: {} for a run without a cache."""
    if not check_regular(Path(run_root) / RECORD):
        return {}
    record = json.loads(read_inside(run_root, RECORD, 2**20))
    return {"round0_cached": record["reused_images"] == record["images"], "round0_cache": record}
