"""Semantic search and retrieval-augmented QA over Shakespeare's plays.

* :func:`chunk_speeches` packs consecutive speeches of a scene into passages of at most
  ``max_words`` words, keeping play / act / scene / speaker metadata.
* :class:`DenseIndex` embeds passages with MiniLM (cached under ``<data dir>/rag/``, keyed by a
  hash of the passages and the model name) and searches by cosine similarity.
* :class:`BM25Index` and :class:`TfidfIndex` are lexical baselines that give the dense
  numbers a meaning.
* :func:`evaluate_retrieval` measures recall@k and MRR on questions whose answering passage is
  known (it contains a quote); :data:`SHAKESPEARE_QA` holds such questions.
* :func:`rag_messages` / :func:`rag_answer` let an instruction-tuned model (SmolLM2) answer from
  the retrieved passages, citing them by id.

Defined in chapter 8, Applications.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

EmbedFn = Callable[[list[str]], torch.Tensor]

# (question, play, a quote that only the answering passage(s) contain). Questions paraphrase on
# purpose; some share words with the quote (easy for BM25), some hardly any (where meaning helps).
_QA_TABLE = """
hamlet | slings and arrows of outrageous fortune | Who wonders whether it is nobler to suffer the blows of bad luck or to fight a sea of troubles?
hamlet | Alas, poor Yorick | Who holds a skull and remembers a jester he knew as a boy?
hamlet | rotten in the state of Denmark | Which soldier says that something is rotten in the state of Denmark?
hamlet | Neither a borrower nor a lender | What advice does a father give his son about lending and borrowing money?
hamlet | Frailty, thy name is woman | Who complains that his mother married again too quickly after his father died?
macbeth | Is this a dagger which I see before me | Who sees a knife floating in the air before he commits a murder?
macbeth | Out, damned spot | Who walks in her sleep trying to wash a spot of blood from her hands?
macbeth | Double, double toil and trouble | What do the witches chant while they stir their cauldron?
macbeth | To-morrow, and to-morrow, and to-morrow | Who says that life is a tale told by an idiot, full of sound and fury?
romeo-and-juliet | yonder window breaks | Who compares the girl at the window to the sun rising in the east?
romeo-and-juliet | wherefore art thou Romeo | Who asks why her lover has to be called Romeo and wishes he would refuse his name?
romeo-and-juliet | plague o' both your houses | Who curses both feuding families as he is dying of his wound?
julius-caesar | lend me your ears | Who asks the crowd to listen because he comes to bury Caesar, not to praise him?
julius-caesar | Et tu, Brute | What does Caesar say when he sees his friend among the assassins?
julius-caesar | Beware the ides of March | Who warns Caesar about a date in the middle of March?
the-merchant-of-venice | quality of mercy is not | Who says that mercy drops like gentle rain from heaven?
the-merchant-of-venice | prick us, do we not bleed | Who argues that a Jew bleeds, laughs and dies just like a Christian?
as-you-like-it | All the world's a stage | Who describes a man's life as a play in seven ages?
twelfth-night | some achieve greatness | Which letter says some are born great and others have greatness thrust upon them?
twelfth-night | If music be the food of love | Which duke asks for more music because it feeds love?
a-midsummer-night-s-dream | course of true love never did run smooth | Who complains that lovers always meet obstacles?
the-tempest | We are such stuff | Who says that people are made of the same stuff as dreams and that their little life ends in sleep?
richard-iii | my kingdom for a horse | Which king offers his whole kingdom in exchange for a horse on the battlefield?
richard-iii | winter of our discontent | Who opens the play saying that the winter of discontent has turned into glorious summer?
othello | green-eyed monster | Who warns Othello that jealousy is a green-eyed monster?
king-lear | than a serpent's tooth | Which father says an ungrateful child hurts more than a snake bite?
henry-v | unto the breach | Which king urges his soldiers to attack the gap in the walls once more?
"""
SHAKESPEARE_QA: tuple[tuple[str, str, str], ...] = tuple(
    (q, play, quote) for play, quote, q in (ln.split(" | ") for ln in _QA_TABLE.strip().splitlines()))


@dataclass(frozen=True)
class Passage:
    """A retrievable piece of a play: ``text`` is ``SPEAKER: line\\nline...`` per speech."""

    pid: int
    play: str
    act: str
    scene: str
    speakers: str
    text: str

    def citation(self) -> str:
        """``[pid] play, act, scene`` for showing a source."""
        return f"[{self.pid}] {self.play}, {self.act}, {self.scene}".rstrip(", ")


@dataclass(frozen=True)
class Hit:
    """One search result: the passage, its score and its 1-based rank."""

    passage: Passage
    score: float
    rank: int


_REQUIRED = ("play", "act", "scene", "speaker", "text")


def chunk_speeches(rows: Iterable[Mapping[str, str]], max_words: int = 120) -> list[Passage]:
    """Pack consecutive speeches of one scene into passages of at most ``max_words`` words.

    ``rows`` are speeches in play order with keys play, act, scene, speaker, text (the columns
    of ``data.load_shakespeare()``). A speech longer than ``max_words`` is cut between lines
    (a single longer line stays whole), so a quote within one line is always in one passage.
    Defined in chapter 8, Applications.
    """
    if not isinstance(max_words, int) or max_words < 1:
        raise ValueError(f"max_words must be a positive int, got {max_words!r}")
    passages: list[Passage] = []
    key: tuple[str, str, str] | None = None
    buf: list[str] = []
    speakers: list[str] = []
    words = 0

    def flush() -> None:
        nonlocal buf, speakers, words
        if buf and key is not None:
            passages.append(Passage(len(passages), key[0], key[1], key[2], ", ".join(speakers), "\n".join(buf)))
        buf, speakers, words = [], [], 0

    for i, row in enumerate(rows):
        missing = [c for c in _REQUIRED if c not in row]
        if missing:
            raise KeyError(f"speech {i} lacks {missing}; expected keys {_REQUIRED}")
        here = (row["play"], row["act"], row["scene"])
        if here != key:
            flush()
            key = here
        pieces: list[list[str]] = [[]]
        count = 0
        for line in str(row["text"]).splitlines():  # cut a long speech between lines
            n = len(line.split())
            if pieces[-1] and count + n > max_words:
                pieces.append([])
                count = 0
            pieces[-1].append(line)
            count += n
        for piece in pieces:
            n = sum(len(line.split()) for line in piece)
            if not n:
                continue
            if buf and words + n > max_words:
                flush()
            buf.append(f"{row['speaker']}: " + "\n".join(piece))
            if row["speaker"] not in speakers:
                speakers.append(row["speaker"])
            words += n
    flush()
    return passages


def shakespeare_passages(plays: Sequence[str] | None = None, max_words: int = 120) -> list[Passage]:
    """Passages of the named plays (all 37 when ``None``), from every split of the data set."""
    from . import data

    dsd = data.load_shakespeare()
    known = sorted({p for split in dsd.values() for p in split.unique("play")})
    if plays is not None:
        if isinstance(plays, str):
            raise TypeError("plays must be a list of play names, e.g. ['macbeth']")
        unknown = sorted(set(plays) - set(known))
        if unknown:
            raise ValueError(f"unknown plays {unknown}; known: {', '.join(known)}")
    wanted = set(known if plays is None else plays)
    rows: list[dict] = []
    for split in ("train", "validation", "test"):  # select, then convert: fast even for all plays
        ds = dsd[split]
        rows += ds.select([i for i, p in enumerate(ds["play"]) if p in wanted]).to_list()
    return chunk_speeches(rows, max_words=max_words)


def passages_hash(passages: Sequence[Passage], model_name: str) -> str:
    """A sha256 (hex, 16 chars) of the passages' text and metadata and the embedding model's name."""
    h = hashlib.sha256(model_name.encode())
    for p in passages:
        h.update(json.dumps(asdict(p), sort_keys=True).encode())
    return h.hexdigest()[:16]


def _check_passages(passages: Sequence[Passage]) -> None:
    if len(passages) == 0:
        raise ValueError("no passages to index")
    if not all(isinstance(p, Passage) for p in passages):
        raise TypeError("passages must be Passage objects (see chunk_speeches)")


def _check_query(query: str, k: int) -> None:
    if not isinstance(query, str) or not query.strip() or not isinstance(k, int) or k < 1:
        raise ValueError(f"expected a non-empty query string and a positive int k, got {query!r}, {k!r}")


def _top_hits(passages: Sequence[Passage], scores: np.ndarray, k: int) -> list[Hit]:
    k = min(k, len(passages))
    order = np.argsort(-scores, kind="stable")[:k]
    return [Hit(passages[i], float(scores[i]), r + 1) for r, i in enumerate(order)]


def minilm_embed_fn() -> EmbedFn:
    """An :data:`EmbedFn` over MiniLM, loaded once (texts are sorted by length to pad less)."""
    from . import pretrained

    model, tokenizer = pretrained.load_minilm()

    def fn(texts: list[str]) -> torch.Tensor:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = pretrained.embed([texts[i] for i in order], model, tokenizer, batch_size=32)
        result = torch.empty_like(out)
        result[torch.tensor(order)] = out
        return result

    return fn


class DenseIndex:
    """Passages and their unit-length embeddings [N, D]; search = cosine similarity = dot product.

    Defined in chapter 8, Applications.
    """

    def __init__(self, passages: Sequence[Passage], embeddings: torch.Tensor, embed_fn: EmbedFn | None = None):
        _check_passages(passages)
        if embeddings.dim() != 2 or embeddings.shape[0] != len(passages):
            raise ValueError(f"embeddings must be [N={len(passages)}, D], got {tuple(embeddings.shape)}")
        self.passages = list(passages)
        self.embeddings = torch.nn.functional.normalize(embeddings.float(), dim=-1)
        self.embed_fn = embed_fn
        self.from_cache = False

    @classmethod
    def build(cls, passages: Sequence[Passage], embed_fn: EmbedFn | None = None,
              model_name: str = "all-MiniLM-L6-v2", cache_dir: str | Path | None = None,
              batch: int = 256, progress: bool = True) -> "DenseIndex":
        """Embed ``passages`` (or load them from ``cache_dir/<hash>.safetensors``) and index them.

        ``embed_fn`` maps a list of strings to [N, D]; MiniLM when ``None``. ``cache_dir``
        defaults to ``<data dir>/rag``. Passages or model changed → new hash → re-embedded.
        """
        from safetensors.torch import load_file, save_file

        _check_passages(passages)
        if cache_dir is None:
            from . import assets
            cache_dir = assets.data_dir() / "rag"
        file = Path(cache_dir) / f"{passages_hash(passages, model_name)}.safetensors"
        if file.is_file():
            from .model_cache import safetensors_problem

            problem = safetensors_problem(file)
            if problem is None:
                emb = load_file(str(file))["embeddings"]
                if emb.shape[0] == len(passages):
                    index = cls(passages, emb, embed_fn)
                    index.from_cache = True
                    return index
            else:
                print(f"[rag] the cached embeddings {file.name}: {problem}; embedding the passages again")
        fn = embed_fn or minilm_embed_fn()
        texts = [p.text for p in passages]
        bar = None
        if progress:  # counts passages, not batches: a one-batch run still shows its progress
            bar = __import__("tqdm.auto", fromlist=["tqdm"]).tqdm(total=len(texts), desc="embedding passages",
                                                                   unit="passage")
        parts = []
        for s in range(0, len(texts), batch):
            parts.append(fn(texts[s:s + batch]))
            if bar is not None:
                bar.update(len(texts[s:s + batch]))
        if bar is not None:
            bar.close()
        emb = torch.cat(parts).float().contiguous()
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.stem}.{os.getpid()}.tmp")  # per process: two kernels may embed at once
        save_file({"embeddings": emb}, str(tmp))
        tmp.replace(file)  # atomic: a half-written cache is never read
        return cls(passages, emb, fn)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The ``k`` passages most similar to ``query``, best first."""
        _check_query(query, k)
        if self.embed_fn is None:
            self.embed_fn = minilm_embed_fn()
        q = torch.nn.functional.normalize(self.embed_fn([query]).float(), dim=-1)  # [1, D]
        scores = (self.embeddings @ q[0]).numpy()  # [N]
        return _top_hits(self.passages, scores, k)


_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?")


def tokenize_words(text: str) -> list[str]:
    """Lower-cased word tokens (apostrophes kept inside words: ``o'er``, ``world's``)."""
    return _TOKEN.findall(text.lower())


class BM25Index:
    """Okapi BM25 over word tokens: score(q, d) = Σ_t idf(t)·tf·(k1+1) / (tf + k1·(1−b+b·|d|/avgdl)).

    Defined in chapter 8, Applications.
    """

    def __init__(self, passages: Sequence[Passage], k1: float = 1.5, b: float = 0.75):
        from sklearn.feature_extraction.text import CountVectorizer

        _check_passages(passages)
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"expected k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.passages = list(passages)
        self.vectorizer = CountVectorizer(tokenizer=tokenize_words, lowercase=False, token_pattern=None)
        tf = self.vectorizer.fit_transform([p.text for p in passages]).tocsr().astype(np.float64)  # [N, V]
        n = tf.shape[0]
        dl = np.asarray(tf.sum(axis=1)).ravel()
        df = np.bincount(tf.indices, minlength=tf.shape[1])
        self.idf = np.log1p((n - df + 0.5) / (df + 0.5))  # [V], always > 0
        norm = k1 * (1 - b + b * dl / dl.mean())  # [N]
        rows = np.repeat(np.arange(n), np.diff(tf.indptr))
        tf.data = tf.data * (k1 + 1) / (tf.data + norm[rows]) * self.idf[tf.indices]
        self.weights = tf  # [N, V] per-term BM25 contributions

    def search(self, query: str, k: int = 5) -> list[Hit]:
        _check_query(query, k)
        q = self.vectorizer.transform([query])  # [1, V] query term counts
        q.data[:] = 1.0
        scores = np.asarray((self.weights @ q.T).todense()).ravel()
        return _top_hits(self.passages, scores, k)


class TfidfIndex:
    """TF-IDF vectors (sublinear tf, L2-normalised) and cosine similarity. Defined in chapter 8, Applications."""

    def __init__(self, passages: Sequence[Passage]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        _check_passages(passages)
        self.passages = list(passages)
        self.vectorizer = TfidfVectorizer(tokenizer=tokenize_words, lowercase=False, token_pattern=None,
                                          sublinear_tf=True)
        self.matrix = self.vectorizer.fit_transform([p.text for p in passages])  # [N, V]

    def search(self, query: str, k: int = 5) -> list[Hit]:
        _check_query(query, k)
        scores = np.asarray((self.matrix @ self.vectorizer.transform([query]).T).todense()).ravel()
        return _top_hits(self.passages, scores, k)


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def gold_ids(passages: Sequence[Passage], quote: str) -> set[int]:
    """Ids of the passages containing ``quote`` (case and whitespace ignored)."""
    q = _norm(quote)
    if not q:
        raise ValueError("quote is empty")
    return {p.pid for p in passages if q in _norm(p.text)}


def evaluate_retrieval(index, qa: Sequence[tuple[str, str, str]], ks: Sequence[int] = (1, 5),
                       depth: int = 100) -> dict[str, float]:
    """recall@k for each k and MRR of ``index.search`` on (question, play, quote) triples.

    A question counts as answered at rank r when a passage containing its quote is r-th; one
    not found in the top ``depth`` adds 0 to MRR. Questions whose quote is in no indexed passage
    raise ``ValueError`` (filter ``qa`` to the indexed plays first).
    """
    if len(qa) == 0:
        raise ValueError("qa is empty")
    ranks: list[float] = []
    for question, _play, quote in qa:
        gold = gold_ids(index.passages, quote)
        if not gold:
            raise ValueError(f"no indexed passage contains {quote!r}; is its play indexed?")
        hits = index.search(question, k=depth)
        ranks.append(next((h.rank for h in hits if h.passage.pid in gold), math.inf))
    r = np.array(ranks)
    out = {f"recall@{k}": float(np.mean(r <= k)) for k in ks}
    out["MRR"] = float(np.mean(np.where(np.isfinite(r), 1.0 / r, 0.0)))
    return out


RAG_SYSTEM = ("You answer questions about Shakespeare's plays using only the numbered passages given. "
              "Answer in one or two sentences and cite the passage number in brackets, like [3]. "
              "If the passages do not contain the answer, say you do not know.")


def rag_messages(question: str, hits: Sequence[Hit], system: str = RAG_SYSTEM) -> list[dict[str, str]]:
    """Chat messages (system + user) that put the retrieved passages, with ids, before the question.

    Defined in chapter 8, Applications.
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question must be a non-empty string")
    if not hits:
        raise ValueError("no passages retrieved; search first")
    context = "\n\n".join(f"[{h.passage.pid}] ({h.passage.play}, {h.passage.act}, {h.passage.scene})\n"
                          f"{h.passage.text}" for h in hits)
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"Passages:\n{context}\n\nQuestion: {question}"}]


@dataclass
class RagAnswer:
    """The model's answer and the passages it was given (its sources)."""

    question: str
    answer: str
    hits: list[Hit]

    def show(self) -> str:
        return "\n".join([f"Q: {self.question}", f"A: {self.answer}", "Sources:"]
                         + [f"  {h.passage.citation()} (score {h.score:.3f})" for h in self.hits])


def rag_answer(question: str, index, model, tokenizer, k: int = 3, max_new_tokens: int = 60) -> RagAnswer:
    """Retrieve ``k`` passages, and let the chat model answer from them (greedy decoding)."""
    from .apps import chat_generate

    hits = index.search(question, k=k)
    answer = chat_generate(model, tokenizer, rag_messages(question, hits), max_new_tokens=max_new_tokens)
    return RagAnswer(question, answer, hits)
