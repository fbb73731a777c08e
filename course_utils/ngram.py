"""Count-based n-gram language models: the baseline every neural LM is measured against.

An n-gram model approximates the chain rule ``P(w_1..w_T) = prod_t P(w_t | w_1..w_{t-1})`` by
looking only at the last ``n-1`` tokens. :class:`NGramLM` counts every m-gram (m = 1..n) with
NumPy (a gram is packed into one int64 code, so millions of characters count in seconds), and
turns counts into probabilities with one of four smoothings:

* ``"mle"``          maximum likelihood ``c(h, w) / c(h)`` (zero for unseen grams; uniform for an
  unseen context),
* ``"add_k"``        ``(c(h, w) + k) / (c(h) + k V)`` (Laplace when ``k = 1``),
* ``"interpolation"`` Jelinek-Mercer ``sum_m lambda_m P_mle(w | last m-1 tokens)`` with a uniform
  order 0; an order whose context was never seen hands its weight to the order below,
* ``"kneser_ney"``   interpolated Kneser-Ney (absolute discount ``d``; lower orders use
  continuation counts).

Every smoothing gives a proper distribution over the vocabulary (tested). Tokens are any
hashable values: characters of a string, words of a list. Sequences are left-padded with
``n-1`` ``bos`` tokens; an out-of-vocabulary token maps to ``unk``.

Defined in chapter 1, Background.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

SMOOTHINGS: tuple[str, ...] = ("mle", "add_k", "interpolation", "kneser_ney")
_MAX_CODE = 2**62


@dataclass
class _Table:
    """Counts of one order m: sorted gram codes and, per context, total and distinct followers."""

    keys: np.ndarray        # [G] sorted int64 codes of m-grams
    counts: np.ndarray      # [G] float64 counts
    ctx_keys: np.ndarray    # [H] sorted codes of the (m-1)-token contexts
    ctx_totals: np.ndarray  # [H] sum of counts per context
    ctx_types: np.ndarray   # [H] number of distinct grams per context


def _make_table(keys: np.ndarray, counts: np.ndarray, base: int) -> _Table:
    ctx = keys // base
    ctx_keys, start, n_types = np.unique(ctx, return_index=True, return_counts=True)
    totals = np.add.reduceat(counts, start) if len(counts) else counts
    return _Table(keys, counts.astype(np.float64), ctx_keys, totals.astype(np.float64),
                  n_types.astype(np.float64))


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``values[keys == q]`` for each q in ``query`` (0 where absent). Shapes: query [N] -> [N]."""
    if len(keys) == 0:
        return np.zeros(len(query), dtype=np.float64)
    idx = np.searchsorted(keys, query).clip(max=len(keys) - 1)
    return np.where(keys[idx] == query, values[idx], 0.0)


class NGramLM:
    """An n-gram language model over any hashable tokens.

    >>> lm = NGramLM(3, smoothing="add_k", k=0.5).fit("to be or not to be")
    >>> round(sum(lm.distribution("to").values()), 6)
    1.0

    Defined in chapter 1, Background.
    """

    def __init__(self, n: int, smoothing: str = "add_k", *, k: float = 1.0,
                 lambdas: Sequence[float] | None = None, discount: float = 0.75,
                 bos: Hashable = "<s>", unk: Hashable = "<unk>") -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be an integer >= 1 (1 = unigram), got {n!r}")
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"unknown smoothing {smoothing!r}; expected one of {', '.join(SMOOTHINGS)}")
        if isinstance(k, bool) or not isinstance(k, numbers.Real) or not 0 < k < math.inf:
            raise ValueError(f"add-k smoothing needs a finite k > 0, got k={k!r}")
        if isinstance(discount, bool) or not isinstance(discount, numbers.Real) or not 0 < discount <= 1:
            raise ValueError(f"Kneser-Ney discount must be in (0, 1], got {discount!r}")
        if bos == unk:
            raise ValueError("bos and unk must be different tokens")
        self.n, self.smoothing, self.k, self.discount = n, smoothing, float(k), float(discount)
        self.bos, self.unk = bos, unk
        self.lambdas = self._check_lambdas(lambdas) if lambdas is not None else self._default_lambdas()
        self.vocab: list[Hashable] = []
        self.index: dict[Hashable, int] = {}
        self._tables: list[_Table] = []      # raw counts, order m at position m-1
        self._kn_tables: list[_Table] = []   # continuation counts (Kneser-Ney lower orders)

    # ------------------------------------------------------------------ set-up
    def _default_lambdas(self) -> np.ndarray:
        w = 2.0 ** np.arange(self.n + 1)   # order 0 (uniform) .. n, higher orders weigh more
        w[0] = 0.01 * w.sum()
        return w / w.sum()

    def _check_lambdas(self, lambdas: Sequence[float]) -> np.ndarray:
        lam = np.asarray(lambdas, dtype=np.float64)
        if lam.shape != (self.n + 1,) or (lam < 0).any() or not np.isclose(lam.sum(), 1.0):
            raise ValueError(f"lambdas must be {self.n + 1} non-negative weights (orders 0..{self.n}, "
                             f"order 0 = uniform) summing to 1, got {list(lam.ravel())}")
        return lam

    @staticmethod
    def _as_sequences(data: object) -> list[Sequence[Hashable]]:
        if isinstance(data, (bytes, bytearray)):
            raise TypeError("data must be a str (characters), a list of tokens or a list of token lists, "
                            "not bytes; decode it first")
        if isinstance(data, str):
            return [data]
        if isinstance(data, Sequence) and len(data) > 0 and all(
                isinstance(s, (list, tuple)) for s in data):
            return list(data)  # several sequences
        if isinstance(data, Sequence):
            return [data]      # one sequence of tokens (e.g. a list of words)
        raise TypeError("data: expected a string (characters), a list of tokens, or a list of token lists; "
                        f"got {type(data).__name__}")

    @property
    def V(self) -> int:
        """Vocabulary size: the tokens the model can predict (``unk`` included, ``bos`` not)."""
        return len(self.vocab)

    @property
    def is_fitted(self) -> bool:
        return bool(self._tables)

    def _require_fit(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("this NGramLM is not fitted yet; call .fit(training_tokens) first")

    def encode(self, seq: Sequence[Hashable]) -> np.ndarray:
        """Token ids of ``seq`` (unknown tokens -> id of ``unk``). Shape [len(seq)]."""
        unk_id = self.index[self.unk]
        return np.fromiter((self.index.get(t, unk_id) for t in seq), dtype=np.int64, count=len(seq))

    def _padded(self, seq: Sequence[Hashable]) -> np.ndarray:
        bos_id = self.V  # bos lives outside the predictable vocabulary
        return np.concatenate([np.full(self.n - 1, bos_id, dtype=np.int64), self.encode(seq)])

    def fit(self, data: str | Sequence[Hashable] | Sequence[Sequence[Hashable]],
            vocab: Sequence[Hashable] | None = None) -> "NGramLM":
        """Count all m-grams (m = 1..n) of the training data; returns ``self``.

        ``data``: a string (a stream of characters), a list of tokens, or a list of token lists
        (each padded on its own). ``vocab`` fixes the vocabulary (else: the training tokens).
        """
        seqs = self._as_sequences(data)
        n_tokens = sum(len(s) for s in seqs)
        if n_tokens == 0:
            raise ValueError("cannot fit an n-gram model on empty data")
        if vocab is None:
            vocab = sorted({t for s in seqs for t in s}, key=str)
        vocab = [t for t in dict.fromkeys(vocab) if t != self.unk]
        if self.bos in vocab:
            raise ValueError(f"the bos token {self.bos!r} occurs in the data; pick another bos=")
        self.vocab = list(vocab) + [self.unk]
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.base = self.V + 1
        if float(self.base) ** self.n >= _MAX_CODE:
            raise ValueError(f"vocabulary of {self.V} is too large for n={self.n}: a gram must fit "
                             "in int64 (use a smaller n or a smaller vocabulary)")
        padded = [self._padded(s) for s in seqs]
        self._tables, self._kn_tables = [], []
        for m in range(1, self.n + 1):
            codes = np.concatenate([self._codes(p, m) for p in padded])
            keys, counts = np.unique(codes, return_counts=True)
            self._tables.append(_make_table(keys, counts.astype(np.float64), self.base))
        if self.smoothing == "kneser_ney":
            for m in range(1, self.n):  # continuation count of an m-gram = distinct left extensions
                suffixes = self._tables[m].keys % (self.base ** m)
                keys, counts = np.unique(suffixes, return_counts=True)
                self._kn_tables.append(_make_table(keys, counts.astype(np.float64), self.base))
            self._kn_tables.append(self._tables[-1])
        return self

    def _codes(self, ids: np.ndarray, m: int) -> np.ndarray:
        """Codes of the m-grams ending at each real token of a padded id array. [T] -> [T-n+1]."""
        T = len(ids) - (self.n - 1)
        code = np.zeros(T, dtype=np.int64)
        for j in range(m):
            start = self.n - m + j
            code = code * self.base + ids[start:start + T]
        return code

    # ------------------------------------------------------------- probabilities
    def _probs(self, ctx: np.ndarray, w: np.ndarray) -> np.ndarray:
        """P(w_i | ctx_i) for a batch. ctx: [N, n-1] ids (bos = V), w: [N] ids -> [N] floats."""
        N = len(w)
        uniform = np.full(N, 1.0 / self.V)
        ctx_codes = [np.zeros(N, dtype=np.int64)]  # context code of order m at index m-1
        for m in range(2, self.n + 1):
            ctx_codes.append(ctx_codes[-1] + ctx[:, self.n - m] * self.base ** (m - 2))
        if self.smoothing in ("mle", "add_k"):
            t = self._tables[-1]
            h = ctx_codes[-1]
            c = _lookup(t.keys, t.counts, h * self.base + w)
            total = _lookup(t.ctx_keys, t.ctx_totals, h)
            if self.smoothing == "add_k":
                return (c + self.k) / (total + self.k * self.V)
            return np.where(total > 0, c / np.maximum(total, 1.0), uniform)
        p = uniform
        if self.smoothing == "interpolation":
            out = self.lambdas[0] * uniform
            for m in range(1, self.n + 1):
                t, h = self._tables[m - 1], ctx_codes[m - 1]
                total = _lookup(t.ctx_keys, t.ctx_totals, h)
                c = _lookup(t.keys, t.counts, h * self.base + w)
                p = np.where(total > 0, c / np.maximum(total, 1.0), p)  # unseen context: order below
                out = out + self.lambdas[m] * p
            return out
        d = self.discount  # interpolated Kneser-Ney, built from order 1 up
        for m in range(1, self.n + 1):
            t, h = self._kn_tables[m - 1], ctx_codes[m - 1]
            total = _lookup(t.ctx_keys, t.ctx_totals, h)
            types = _lookup(t.ctx_keys, t.ctx_types, h)
            c = _lookup(t.keys, t.counts, h * self.base + w)
            safe = np.maximum(total, 1.0)
            p = np.where(total > 0, np.maximum(c - d, 0.0) / safe + d * types / safe * p, p)
        return p

    def _context_ids(self, context: Sequence[Hashable]) -> np.ndarray:
        ids = list(self.encode(list(context))[-(self.n - 1):]) if self.n > 1 and len(context) else []
        return np.array([self.V] * (self.n - 1 - len(ids)) + ids, dtype=np.int64)

    def prob(self, token: Hashable, context: Sequence[Hashable] = ()) -> float:
        """P(token | context); only the last n-1 context tokens matter (fewer: bos-padded)."""
        self._require_fit()
        ctx = self._context_ids(context).reshape(1, self.n - 1)
        return float(self._probs(ctx, self.encode([token]))[0])

    def distribution(self, context: Sequence[Hashable] = ()) -> dict[Hashable, float]:
        """P(w | context) for every w of the vocabulary, as a dict that sums to 1."""
        return dict(zip(self.vocab, self.distribution_array(context).tolist()))

    def distribution_array(self, context: Sequence[Hashable] = ()) -> np.ndarray:
        """P(w | context) for every vocabulary id, shape [V]."""
        self._require_fit()
        ctx = np.tile(self._context_ids(context), (self.V, 1))
        return self._probs(ctx, np.arange(self.V, dtype=np.int64))

    def log_probs(self, seq: Sequence[Hashable]) -> np.ndarray:
        """Natural-log probability of each token of ``seq`` given the ones before it. [T] -> [T]."""
        self._require_fit()
        if len(seq) == 0:
            raise ValueError("cannot score an empty sequence")
        ids = self._padded(seq)
        win = np.lib.stride_tricks.sliding_window_view(ids, self.n)  # [T, n]
        with np.errstate(divide="ignore"):
            return np.log(self._probs(win[:, :-1], win[:, -1]))

    def cross_entropy(self, data: str | Sequence[Hashable] | Sequence[Sequence[Hashable]]) -> float:
        """Mean negative log-likelihood per token in nats (``inf`` if a token gets probability 0)."""
        seqs = self._as_sequences(data)
        if not any(len(s) for s in seqs):
            raise ValueError("data is empty: there is no token to score")
        lp = np.concatenate([self.log_probs(s) for s in seqs])
        return float(-lp.mean())

    def perplexity(self, data: str | Sequence[Hashable] | Sequence[Sequence[Hashable]]) -> float:
        """``exp(cross-entropy)``: the model is as unsure as a uniform choice among this many tokens."""
        return float(np.exp(self.cross_entropy(data)))

    def tune_lambdas(self, held_out: str | Sequence[Hashable], iters: int = 30) -> np.ndarray:
        """Fit the interpolation weights on held-out tokens by EM; sets and returns ``lambdas``.

        Use data that is neither the training text nor the evaluation text.
        """
        self._require_fit()
        if self.smoothing != "interpolation":
            raise ValueError("tune_lambdas only applies to smoothing='interpolation'")
        ids = self._padded(held_out)
        win = np.lib.stride_tricks.sliding_window_view(ids, self.n)
        ctx, w = win[:, :-1], win[:, -1]
        comps = []
        for m in range(self.n + 1):  # P of each order alone: lambda = one-hot
            lam = np.zeros(self.n + 1)
            lam[m] = 1.0
            self.lambdas = lam
            comps.append(self._probs(ctx, w))
        q = np.stack(comps, axis=1)  # [N, n+1]
        lam = np.full(self.n + 1, 1.0 / (self.n + 1))
        for _ in range(iters):
            resp = q * lam
            resp /= resp.sum(axis=1, keepdims=True)
            lam = resp.mean(axis=0)
        self.lambdas = lam / lam.sum()
        return self.lambdas

    def sample(self, num_tokens: int, context: Sequence[Hashable] = (), *,
               seed: int | None = None, temperature: float = 1.0) -> list[Hashable]:
        """Draw ``num_tokens`` tokens one at a time from P(w | last n-1 tokens)."""
        self._require_fit()
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 0:
            raise ValueError(f"num_tokens must be a non-negative integer, got {num_tokens!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not 0 < temperature < math.inf:
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        rng = np.random.default_rng(seed)
        history = list(context)
        out: list[Hashable] = []
        for _ in range(num_tokens):
            p = self.distribution_array(history[-(self.n - 1):] if self.n > 1 else [])
            if temperature != 1.0:
                p = p ** (1.0 / temperature)
            tok = self.vocab[int(rng.choice(self.V, p=p / p.sum()))]
            out.append(tok)
            history.append(tok)
        return out

    def __repr__(self) -> str:
        state = f"V={self.V}" if self.is_fitted else "not fitted"
        return f"NGramLM(n={self.n}, smoothing={self.smoothing!r}, {state})"


__all__ = ["NGramLM", "SMOOTHINGS"]
