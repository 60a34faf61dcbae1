"""Fuzz tests (issue 14, item 7): random configs and randomly damaged pools, through the real code.

Property: the program either works or answers with one line (a `DeliberateError`; through the CLI,
exit 2 and exactly one line on stderr), never a traceback, and never writes outside its folder.
Hypothesis runs derandomized (the same examples on every machine) with example counts that keep
the file near 30 s on a loaded 2-core machine; each bug it found is pinned by an `@example`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import stat
import tempfile
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from deliberate.cli import main
from deliberate.config import apply_overrides, from_dict, load_config, to_dict
from deliberate.data.pool import Pool
from deliberate.errors import DeliberateError
from deliberate.generators.train_pixel import GeneratorConfig
from deliberate.practice import PracticeConfig

FUZZ = dict(
    deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SHAPE, CLASSES = (8, 8), ["a", "b", "c"]


def one_line(e: DeliberateError) -> None:
    """What the CLI prints for `e` is one line."""
    text = str(e)
    assert text and "\n" not in text and "\r" not in text, repr(text)


# -- the config loader ---------------------------------------------------------------------------

# Scalars a YAML or --set value can be: huge ints, NaN/inf, dates and binary as text, odd strings.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["nan", "inf", "-inf", ".nan", ".inf", "1e999", "2024-01-01", "0x10", "1_000"]),
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=5,
)


def config_dict(cls) -> st.SearchStrategy[dict]:
    """Mappings shaped like `cls`: a random subset of its real keys (sections recursed into, or
    replaced by anything), sometimes a misspelled or foreign key, values of any type."""
    hints = typing.get_type_hints(cls)
    parts = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        parts[f.name] = (config_dict(tp) | VALUES) if dataclasses.is_dataclass(tp) else VALUES
    known = st.fixed_dictionaries({}, optional=parts)
    foreign = st.dictionaries(st.text(max_size=8) | st.integers() | st.none(), VALUES, max_size=2)
    return st.one_of(known, known, st.builds(lambda a, b: {**a, **b}, known, foreign))


def dotted_keys(cls, prefix="") -> list[str]:
    """Every dotted key of `cls` (sections and leaves)."""
    out, hints = [], typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        out.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out += dotted_keys(hints[f.name], f"{prefix}{f.name}.")
    return out


def loads_or_refuses(cls, build) -> object | None:
    """Call `build()`: a `cls` whose saved form reloads to itself, or None after a one-line error."""
    try:
        cfg = build()
    except DeliberateError as e:
        one_line(e)
        event("refused")
        return None
    event("loaded")
    assert isinstance(cfg, cls)
    # A run saves its config as YAML and a resume reads it back through the same loader.
    saved = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    assert all(not (isinstance(v, float) and not math.isfinite(v)) for v in _leaves(to_dict(cfg)))
    assert from_dict(cls, yaml.load(saved, Loader=yaml.SafeLoader)) == cfg  # noqa: S506
    return cfg


def _leaves(d):
    for v in d.values() if isinstance(d, dict) else d if isinstance(d, list) else [d]:
        yield from _leaves(v) if isinstance(v, (dict, list)) else [v]


@pytest.mark.parametrize("cls", [PracticeConfig, GeneratorConfig], ids=["practice", "generator"])
@settings(max_examples=80, **FUZZ)
@given(data=st.data())
def test_random_mappings_build_a_config_or_get_one_line(cls, data):
    loads_or_refuses(cls, lambda: from_dict(cls, data.draw(config_dict(cls))))


# YAML text: a random mapping dumped plainly, with anchors/aliases, tags, and raw lines.
YAML_EXTRAS = st.sampled_from([
    "seed: 2024-01-01\n", "seed: !!binary aGVsbG8=\n", "a: &x [1, 2]\nb: *x\n", "<<: {seed: 1}\n",
    "seed: .nan\n", "threads: .inf\n", "seed: 0x1F\n", "seed: 1e3\n", "practice: &p {initial: 10}\n",
    "seed: !!python/object:os.system echo\n", "seed: !!int 'x'\n", "? [a, b]\n: 1\n", "--- 1\n--- 2\n",
    "seed: 99999999999999999999999999999\n", "data_dir: !!timestamp 2001-12-14t21:59:43.10-05:00\n",
    "generator: {sampler: {cfg: nan}}\n", "x: *undefined\n", "\t- tab\n", "%YAML 1.1\n---\n{}\n",
    "a: &a [*a]\n", "seed: 1\nseed: 2\n", "learner:\n  lr: '1e-3'\n", "\ufeffseed: 1\n", "",
    "seed: !!float ''\n", "seed: !!bool x\n", "practice: !!set {a, b}\n", "seed: !!omap [a: 1]\n",
])  # fmt: skip
YAML_TEXT = st.one_of(
    st.builds(lambda d: yaml.safe_dump(d, sort_keys=False), config_dict(PracticeConfig)),
    st.builds(lambda d, x: yaml.safe_dump(d) + x, config_dict(PracticeConfig), YAML_EXTRAS),
    st.lists(YAML_EXTRAS, min_size=1, max_size=3).map("".join),
    st.text(alphabet=":-[]{}&*!|>'\"#%@` \n\tabseed0123.", max_size=40),
)


@settings(max_examples=150, **FUZZ)
@given(text=YAML_TEXT)
@example(text="generator: {}\nseed: !!int 'x'\n")  # bug 1: ValueError from PyYAML
@example(text="seed: !!int ''\n")  # bug 1: IndexError
@example(text="seed: !!bool x\n")  # bug 1: KeyError
@example(text="practice: !!set {a, b}\n")  # bug 2: TypeError (a set is not JSON)
def test_random_yaml_files_load_or_get_one_line(text, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    loads_or_refuses(PracticeConfig, lambda: load_config(PracticeConfig, path))


SET_VALUES = st.one_of(
    st.text(alphabet="[]{},:'\"&*!#- .0123456789naifeu\\", max_size=12),
    SCALARS.map(lambda v: yaml.safe_dump(v).removesuffix("\n...\n").strip()),
    st.sampled_from(["[", "{a: 1", "*x", "&a 1", "!!binary aGk=", "2024-01-01", "nan", "1e309"]),
)
SET_KEYS = st.sampled_from(dotted_keys(PracticeConfig)) | st.text(alphabet="ab.=_", max_size=8)


@settings(max_examples=300, **FUZZ)
@given(sets=st.lists(st.tuples(SET_KEYS, st.sampled_from(["=", "", "=="]), SET_VALUES), max_size=4))
def test_random_set_overrides_load_or_get_one_line(sets):
    overrides = [k + eq + v for k, eq, v in sets]
    base = to_dict(PracticeConfig())
    loads_or_refuses(
        PracticeConfig, lambda: from_dict(PracticeConfig, apply_overrides(base, overrides))
    )


# -- the pool reader -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_pool(tmp_path_factory) -> Path:
    """One small valid pool of random 8x8 images in three shards, built once."""
    root = tmp_path_factory.mktemp("fuzz") / "good"
    pool = Pool.open_or_create(root, {"class_names": CLASSES})
    rng = np.random.default_rng(0)
    for n in (5, 4, 6):
        first = len(pool)
        images = rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8)
        pool.append(images, [{"label": (first + i) % 3, "seed": first + i} for i in range(n)])
    return root


def snapshot(root: Path, skip: tuple[str, ...]) -> dict:
    """Every entry under root but `skip` (top-level names), never followed, by content or kind."""
    out = {}
    for top, dirs, files in os.walk(root):
        if top == str(root):
            dirs[:] = [d for d in dirs if d not in skip]
        for name in [*dirs, *files]:
            path = os.path.join(top, name)
            rel = os.path.relpath(path, root)
            if rel in skip:
                continue
            mode = os.lstat(path).st_mode
            out[rel] = Path(path).read_bytes() if stat.S_ISREG(mode) else stat.S_IFMT(mode)
    return out


# One damage: which file (an index into the pool's files), what to do, where, with which bytes.
DAMAGE = st.tuples(
    st.integers(0, 99),
    st.sampled_from(["flip", "truncate", "insert", "overwrite"]),
    st.integers(0, 2**31),
    st.binary(min_size=1, max_size=8),
)


def damage(root: Path, edits) -> None:
    """Apply `edits` (see DAMAGE) to the shards, manifest.jsonl and pool.json under root."""
    files = sorted([root / "pool.json", root / "manifest.jsonl", *(root / "shards").iterdir()])
    for which, op, where, data in edits:
        path = files[which % len(files)]
        raw = bytearray(path.read_bytes())
        at = where % (len(raw) + 1)
        if op == "flip" and raw:
            at %= len(raw)
            raw[at] ^= data[0] or 0xFF
        elif op == "truncate":
            raw = raw[:at]
        elif op == "insert":
            raw[at:at] = data
        else:
            raw[at : at + len(data)] = data
        path.write_bytes(bytes(raw))


@settings(max_examples=200, **FUZZ)
@given(edits=st.lists(DAMAGE, min_size=1, max_size=3))
@example(edits=[(0, "flip", 93002, b"\x01")])  # bug 3: a damaged last row lost its shard's rows
@example(edits=[(0, "flip", 92990, b"\x01")])  # bug 4: a row without "seed" was trusted
def test_a_randomly_damaged_pool_exports_or_gets_one_line(edits, good_pool, tmp_path, capsys):
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    pool, out = base / "pool", base / "out.npz"
    shutil.copytree(good_pool, pool)
    damage(pool, edits)
    before, damaged = snapshot(base, ("pool",)), snapshot(pool, ())
    code = main(["export", str(pool), "--format", "npz", "--out", str(out)])
    _, err = capsys.readouterr()
    event(f"exit {code}")
    assert "Traceback" not in err
    assert snapshot(base, ("pool", "out.npz")) == before  # nothing written beside the pool
    if code == 0:
        with np.load(out) as z:
            images, labels = z["images"], z["labels"]
        good = Pool(good_pool).load_all()  # a repaired pool is the pool it was, image for image
        assert np.array_equal(images, good[0]) and np.array_equal(labels, good[1])
        assert Pool(pool).verify() == len(images)
    else:
        assert code == 2 and err.startswith("deliberate: error: ") and err.count("\n") == 1, err
        assert not out.exists()
        # Refused: nothing lost. The one write allowed is the manifest's repair from the shards'
        # own rows (it happens when the pool opens, before a later read finds a shard corrupt),
        # which restores exactly the manifest the pool was built with.
        now, good = snapshot(pool, ()), (good_pool / "manifest.jsonl").read_bytes()
        assert now["manifest.jsonl"] in (damaged["manifest.jsonl"], good)
        assert {**now, "manifest.jsonl": b""} == {**damaged, "manifest.jsonl": b""}
