"""Static word vectors: skip-gram with negative sampling (word2vec), nearest neighbours, analogies.

Mikolov et al. (2013) learn one vector per word type by asking, for every word of a corpus,
which words appear within a few positions of it. Skip-gram with negative sampling (SGNS) turns
this into many small binary problems: for a centre word ``c`` and a true context word ``o``,
push ``sigma(u_o . v_c)`` towards 1, and for ``K`` words drawn from a noise distribution
(unigram counts to the power 0.75) push ``sigma(u_k . v_c)`` towards 0:

    loss = -log sigma(u_o . v_c) - sum_k log sigma(-u_k . v_c)

``v`` (the "input" or centre table) is the word vector kept at the end; ``u`` (the "output" or
context table) is thrown away, as gensim does. The pieces:

* :func:`tokenize_english`, :func:`build_vocab`, :func:`keep_probabilities` (frequent-word
  subsampling, word2vec's formula), :func:`noise_distribution`;
* :func:`skipgram_pairs` (centre/context pairs with word2vec's random reduced window),
  :func:`sgns_loss`, :class:`SkipGram` and :func:`train_skipgram`;
* :class:`WordVectors` with :meth:`~WordVectors.most_similar` and :meth:`~WordVectors.analogy`
  (3CosAdd, as ``gensim``'s ``most_similar(positive=[b, c], negative=[a])``), and
  :func:`read_analogies` / :func:`evaluate_analogies` for Mikolov's ``questions-words.txt``.

Defined in chapter 1, Background.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def tokenize_english(text: str) -> list[str]:
    """Lower-cased words of ``text`` (letters, with inner apostrophes kept: ``'tis`` -> ``tis``)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _WORD.findall(text.lower())


@dataclass
class Vocab:
    """Word types kept for training, most frequent first. ``counts[i]`` is the count of ``itos[i]``."""

    itos: list[str]
    counts: np.ndarray                      # [V] int64
    stoi: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, sentences: Iterable[Sequence[str]]) -> list[list[int]]:
        """Sentences of words -> sentences of ids; words outside the vocabulary are dropped."""
        return [[self.stoi[w] for w in s if w in self.stoi] for s in sentences]


def build_vocab(sentences: Iterable[Sequence[str]], min_count: int = 5) -> Vocab:
    """Types seen at least ``min_count`` times, sorted by count (ties: alphabetically).

    Defined in chapter 1, Background.
    """
    if not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
    counts = Counter(w for s in sentences for w in s)
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if not kept:
        raise ValueError(f"no word occurs min_count={min_count} times; lower min_count or give more text")
    return Vocab(kept, np.array([counts[w] for w in kept], dtype=np.int64))


def keep_probabilities(counts: np.ndarray, sample: float = 1e-3) -> np.ndarray:
    """word2vec's subsampling: P(keep w) = (sqrt(f/(s N)) + 1) * s N / f, capped at 1. [V] -> [V].

    ``f`` is the word's count, ``N`` the corpus size, ``s`` = ``sample``. Very frequent words
    ("the", "and") are mostly dropped, rare ones always kept. ``sample=0`` keeps everything.

    Defined in chapter 1, Background.
    """
    if sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample!r}")
    counts = np.asarray(counts, dtype=np.float64)
    if sample == 0:
        return np.ones_like(counts)
    threshold = sample * counts.sum()
    return np.minimum(1.0, (np.sqrt(counts / threshold) + 1.0) * threshold / counts)


def noise_distribution(counts: np.ndarray, power: float = 0.75) -> torch.Tensor:
    """Negative-sampling distribution: counts ** power, normalised. [V] -> [V] float64.

    Defined in chapter 1, Background.
    """
    weights = torch.as_tensor(np.asarray(counts, dtype=np.float64)) ** power
    return weights / weights.sum()


def skipgram_pairs(sentences: Sequence[Sequence[int]], window: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """All (centre, context) id pairs of the sentences, word2vec-style: arrays [P], [P].

    For every token a reduced window ``b`` is drawn uniformly from 1..``window`` (one draw per
    token, in corpus order, from ``rng``); its contexts are the tokens at most ``b`` positions
    away in the same sentence. Nearer words are therefore used more often. The result is ordered
    by offset, not by position (the chapter's loop gives the same pairs in another order).

    Defined in chapter 1, Background.
    """
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    lengths = np.array([len(s) for s in sentences], dtype=np.int64)
    ids = np.fromiter((w for s in sentences for w in s), dtype=np.int64, count=int(lengths.sum()))
    sent = np.repeat(np.arange(len(lengths)), lengths)
    reach = rng.integers(1, window + 1, size=len(ids))
    centres, contexts = [], []
    for o in range(1, window + 1):
        same = sent[:-o] == sent[o:]
        right = same & (reach[:-o] >= o)          # centre i, context i + o
        left = same & (reach[o:] >= o)            # centre i + o, context i
        centres += [ids[:-o][right], ids[o:][left]]
        contexts += [ids[o:][right], ids[:-o][left]]
    return np.concatenate(centres), np.concatenate(contexts)


def sgns_loss(centre: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Mean skip-gram negative-sampling loss.

    centre [B, d] (v_c), context [B, d] (u_o), negatives [B, K, d] (u_k) -> scalar
    ``mean_b( -log sigma(u_o . v_c) - sum_k log sigma(-u_k . v_c) )``.

    Defined in chapter 1, Background.
    """
    if centre.shape != context.shape or negatives.dim() != 3 or negatives.shape[::2] != centre.shape:
        raise ValueError("expected centre [B, d], context [B, d], negatives [B, K, d]; got "
                         f"{tuple(centre.shape)}, {tuple(context.shape)}, {tuple(negatives.shape)}")
    positive = F.logsigmoid((centre * context).sum(-1))                                   # [B]
    negative = F.logsigmoid(-torch.bmm(negatives, centre.unsqueeze(-1)).squeeze(-1)).sum(-1)  # [B]
    return -(positive + negative).mean()


class SkipGram(nn.Module):
    """Two tables of word vectors: ``centre`` (v, kept) and ``context`` (u, discarded after training).

    Initialised as word2vec does: centre vectors uniform in [-0.5/d, 0.5/d], context vectors 0.
    """

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        if vocab_size < 2 or dim < 1:
            raise ValueError(f"need vocab_size >= 2 and dim >= 1, got {vocab_size}, {dim}")
        self.centre = nn.Embedding(vocab_size, dim, sparse=True)
        self.context = nn.Embedding(vocab_size, dim, sparse=True)
        nn.init.uniform_(self.centre.weight, -0.5 / dim, 0.5 / dim)
        nn.init.zeros_(self.context.weight)

    def forward(self, centre: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Ids centre [B], context [B], negatives [B, K] -> the mean SGNS loss (scalar)."""
        return sgns_loss(self.centre(centre), self.context(context), self.context(negatives))


@dataclass
class WordVectors:
    """Unit-length word vectors [V, d] and their words, with similarity queries."""

    itos: list[str]
    vectors: torch.Tensor                   # [V, d], rows L2-normalised
    stoi: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.vectors.dim() != 2 or self.vectors.shape[0] != len(self.itos):
            raise ValueError(f"vectors must be [len(itos)={len(self.itos)}, d], got {tuple(self.vectors.shape)}")
        self.vectors = F.normalize(self.vectors.detach().float().cpu(), dim=1)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def _id(self, word: str) -> int:
        if word not in self.stoi:
            raise KeyError(f"{word!r} is not in the vocabulary ({len(self.itos):,} words)")
        return self.stoi[word]

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two words."""
        return float(self.vectors[self._id(a)] @ self.vectors[self._id(b)])

    def _nearest(self, query: torch.Tensor, exclude: set[int], k: int) -> list[tuple[str, float]]:
        sims = self.vectors @ F.normalize(query, dim=0)
        if exclude:
            sims[list(exclude)] = -torch.inf
        top = torch.topk(sims, min(k, len(self.itos) - len(exclude)))
        return [(self.itos[i], float(s)) for s, i in zip(top.values, top.indices.tolist())]

    def most_similar(self, word: str, k: int = 5) -> list[tuple[str, float]]:
        """The k words with the highest cosine similarity to ``word`` (itself excluded)."""
        i = self._id(word)
        return self._nearest(self.vectors[i], {i}, k)

    def analogy(self, a: str, b: str, c: str, k: int = 1) -> list[tuple[str, float]]:
        """a : b :: c : ?  by 3CosAdd: nearest to b - a + c (unit vectors), the three words excluded."""
        ia, ib, ic = self._id(a), self._id(b), self._id(c)
        return self._nearest(self.vectors[ib] - self.vectors[ia] + self.vectors[ic], {ia, ib, ic}, k)


def read_analogies(path: str | Path, vocab: Iterable[str] | None = None,
                   lowercase: bool = True) -> dict[str, list[tuple[str, str, str, str]]]:
    """Sections of a ``questions-words.txt`` file: {section: [(a, b, c, d), ...]}.

    With ``vocab``, only questions whose four words are all in it are kept (sections left empty
    are dropped). Lower-cased by default, as the course's word vectors are.
    """
    keep = None if vocab is None else set(vocab)
    sections: dict[str, list[tuple[str, str, str, str]]] = {}
    current = None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith(":"):
            current = line[1:].strip()
            sections[current] = []
            continue
        words = line.lower().split() if lowercase else line.split()
        if len(words) != 4 or current is None:
            continue
        if keep is None or all(w in keep for w in words):
            sections[current].append(tuple(words))
    return {s: q for s, q in sections.items() if q}


def evaluate_analogies(wv: WordVectors, sections: dict[str, list[tuple[str, str, str, str]]]) -> dict[str, float]:
    """Share of questions a : b :: c : d whose 3CosAdd answer is d, per section and ``"total"``.

    Batched: one matrix product per section. Questions with a word outside ``wv`` are skipped.
    """
    correct, seen, out = 0, 0, {}
    for name, qs in sections.items():
        qs = [q for q in qs if all(w in wv for w in q)]
        if not qs:
            continue
        idx = torch.tensor([[wv.stoi[w] for w in q] for q in qs])             # [Q, 4]
        query = wv.vectors[idx[:, 1]] - wv.vectors[idx[:, 0]] + wv.vectors[idx[:, 2]]
        sims = F.normalize(query, dim=1) @ wv.vectors.T                       # [Q, V]
        sims.scatter_(1, idx[:, :3], -torch.inf)
        hits = int((sims.argmax(1) == idx[:, 3]).sum())
        out[name] = hits / len(qs)
        correct, seen = correct + hits, seen + len(qs)
    out["total"] = correct / seen if seen else float("nan")
    return out


def train_skipgram(sentences: Sequence[Sequence[str]], *, dim: int = 100, window: int = 5,
                   negative: int = 5, min_count: int = 5, sample: float = 1e-3, epochs: int = 1,
                   batch_size: int = 1024, lr: float = 0.01, seed: int = 0,
                   progress: bool = False) -> tuple[WordVectors, list[float]]:
    """Train skip-gram with negative sampling on tokenised sentences; return (vectors, losses).

    Each epoch subsamples frequent words, draws fresh reduced windows, shuffles the pairs, and
    takes steps of ``batch_size`` pairs with ``negative`` noise words each (SparseAdam, learning
    rate decayed linearly to 0, as word2vec decays its SGD rate). ``losses`` has one mean loss
    per step. Deterministic for a given ``seed`` on one thread.

    Defined in chapter 1, Background.
    """
    for name, value in [("dim", dim), ("negative", negative), ("epochs", epochs), ("batch_size", batch_size)]:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    vocab = build_vocab(sentences, min_count)
    ids = vocab.encode(sentences)
    keep = keep_probabilities(vocab.counts, sample)
    noise = noise_distribution(vocab.counts)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SkipGram(len(vocab), dim)
    opt = torch.optim.SparseAdam(list(model.parameters()), lr=lr)
    epoch_pairs = []
    for _ in range(epochs):
        kept = [[w for w, r in zip(s, rng.random(len(s))) if r < keep[w]] for s in ids]
        c, o = skipgram_pairs(kept, window, rng)
        order = rng.permutation(len(c))
        epoch_pairs.append((torch.from_numpy(c[order]), torch.from_numpy(o[order])))
    total_steps = sum(-(-len(c) // batch_size) for c, _ in epoch_pairs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(1e-4, 1 - s / total_steps))
    losses: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps, desc="skip-gram")
    for c, o in epoch_pairs:
        for s in range(0, len(c), batch_size):
            centre, context = c[s:s + batch_size], o[s:s + batch_size]
            neg = torch.multinomial(noise, len(centre) * negative, replacement=True, generator=gen)
            loss = model(centre, context, neg.view(len(centre), negative))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    return WordVectors(vocab.itos, model.centre.weight.detach()), losses
