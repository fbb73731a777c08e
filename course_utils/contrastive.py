"""Contrastive training of a sentence encoder: InfoNCE with in-batch negatives.

* :func:`info_nce` — the loss: each query must pick its own passage among the batch's passages,
  a softmax over cosine similarities divided by a temperature.
* :func:`ict_pairs` — (pseudo-query, passage) pairs with no labels, by the *inverse cloze task*
  (Lee et al., 2019): a line taken out of a passage is the query, the passage without it the
  positive.
* :func:`train_in_batch_negatives` — fine-tunes an encoder (MiniLM) on such pairs.
* :func:`eval_passages` and :func:`retrieval_scores` — recall@k and MRR on chapter 8's
  Shakespeare questions (:data:`course_utils.rag.SHAKESPEARE_QA`), through ``rag``'s own index
  and evaluation.

Defined in chapter 7, Fine-tuning.
"""
from __future__ import annotations

import copy
import random
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from . import rag
from .models.bert import mean_pool

__all__ = ["info_nce", "ict_pairs", "encode", "train_in_batch_negatives", "eval_passages", "retrieval_scores",
           "pair_recall", "qa_plays", "train_plays"]


def info_nce(queries: torch.Tensor, passages: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Mean InfoNCE loss of ``queries`` [B, D] against ``passages`` [B, D] (row i is query i's positive).

    Rows are L2-normalised; logits[i, j] = cos(q_i, p_j) / temperature; the loss is the
    cross-entropy of each row with target i, so the other B - 1 passages are the negatives.
    Defined in chapter 7, Fine-tuning.
    """
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if queries.dim() != 2 or queries.shape != passages.shape:
        raise ValueError(f"queries and passages must both be [B, D] with the same shape, got "
                         f"{tuple(queries.shape)} and {tuple(passages.shape)}")
    q, p = F.normalize(queries, dim=-1), F.normalize(passages, dim=-1)
    logits = q @ p.T / temperature                                    # [B, B]
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


def qa_plays() -> list[str]:
    """The plays that chapter 8's questions are about (held out from training pairs)."""
    return sorted({play for _, play, _ in rag.SHAKESPEARE_QA})


def train_plays() -> list[str]:
    """Every other play: the source of training pairs, so that no question's play is trained on."""
    from . import data

    dsd = data.load_shakespeare()
    every = {p for split in dsd.values() for p in split.unique("play")}
    return sorted(every - set(qa_plays()))


def ict_pairs(passages: Sequence[rag.Passage], n: int, seed: int = 0, min_words: int = 5,
              max_words: int = 60) -> list[tuple[str, str]]:
    """``n`` (query, positive) pairs: a line of a passage (speaker's name removed), and the rest of it.

    Only passages with at least two lines and a line of ``min_words``..``max_words`` words are
    used; each passage gives at most one pair, chosen with ``seed``.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    rng = random.Random(seed)
    order = list(range(len(passages)))
    rng.shuffle(order)
    pairs: list[tuple[str, str]] = []
    for i in order:
        lines = passages[i].text.splitlines()
        if len(lines) < 2:
            continue
        choices = [j for j, ln in enumerate(lines) if min_words <= len(ln.split(": ", 1)[-1].split()) <= max_words]
        if not choices:
            continue
        j = rng.choice(choices)
        query = lines[j].split(": ", 1)[-1] if lines[j].split(": ", 1)[0].isupper() else lines[j]
        rest = "\n".join(lines[:j] + lines[j + 1:])
        pairs.append((query, rest))
        if len(pairs) == n:
            return pairs
    raise ValueError(f"only {len(pairs)} pairs can be made from {len(passages)} passages, asked for {n}")


def encode(model: torch.nn.Module, tokenizer, texts: Sequence[str], max_length: int = 128) -> torch.Tensor:
    """Unit-length mean-pooled embeddings [N, D] of ``texts``, with gradients (training)."""
    device = next(model.parameters()).device
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return F.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)


def train_in_batch_negatives(model: torch.nn.Module, tokenizer, pairs: Sequence[tuple[str, str]], *, steps: int,
                             batch_size: int = 32, temperature: float = 0.05, lr: float = 2e-5,
                             max_length: int = 128, seed: int = 0, progress: bool = True,
                             loss_fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] = info_nce):
    """A trained copy of ``model`` and its loss per step, with in-batch negatives.

    Each step draws ``batch_size`` pairs, embeds queries and passages with the same encoder
    (:func:`encode`) and minimises ``loss_fn`` (default :func:`info_nce`) with AdamW.
    ``model`` itself is not changed. Defined in chapter 7, Fine-tuning.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not isinstance(batch_size, int) or not 2 <= batch_size <= len(pairs):
        raise ValueError(f"batch_size must be an int from 2 to len(pairs)={len(pairs)}, got {batch_size!r}")
    model = copy.deepcopy(model).train()
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = random.Random(seed)
    losses: list[float] = []
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=f"in-batch negatives, temperature {temperature:g}")
    for _ in it:
        batch = rng.sample(list(pairs), batch_size)
        q = encode(model, tokenizer, [a for a, _ in batch], max_length)
        p = encode(model, tokenizer, [b for _, b in batch], max_length)
        loss = loss_fn(q, p, temperature)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return model.eval(), losses


def eval_passages(n_distractors: int | None = None, seed: int = 0) -> list[rag.Passage]:
    """The passages of :func:`qa_plays`: every gold passage of the questions plus ``n_distractors``
    others drawn with ``seed`` (all of them when ``None``). Smaller haystacks make recall easier."""
    passages = rag.shakespeare_passages(plays=qa_plays())
    if n_distractors is None:
        return passages
    if not isinstance(n_distractors, int) or n_distractors < 0:
        raise ValueError(f"n_distractors must be a non-negative int or None, got {n_distractors!r}")
    gold = set().union(*(rag.gold_ids(passages, quote) for _, _, quote in rag.SHAKESPEARE_QA))
    others = [p for p in passages if p.pid not in gold]
    keep = gold | {p.pid for p in random.Random(seed).sample(others, min(n_distractors, len(others)))}
    return [p for p in passages if p.pid in keep]


@torch.no_grad()
def retrieval_scores(model: torch.nn.Module, tokenizer, passages: Sequence[rag.Passage],
                     qa: Sequence[tuple[str, str, str]] = rag.SHAKESPEARE_QA, ks: Sequence[int] = (1, 5, 10),
                     max_length: int = 128, batch_size: int = 32) -> dict[str, float]:
    """recall@k and MRR of ``model`` as a dense retriever (``rag.DenseIndex`` + ``rag.evaluate_retrieval``)."""
    model = model.eval()

    def embed_fn(texts: list[str]) -> torch.Tensor:
        return torch.cat([encode(model, tokenizer, texts[i:i + batch_size], max_length).cpu()
                          for i in range(0, len(texts), batch_size)])

    index = rag.DenseIndex(passages, embed_fn([p.text for p in passages]), embed_fn)
    return rag.evaluate_retrieval(index, qa, ks=ks)


@torch.no_grad()
def pair_recall(model: torch.nn.Module, tokenizer, pairs: Sequence[tuple[str, str]], k: int = 1,
                max_length: int = 128, batch_size: int = 32) -> float:
    """The share of queries whose own passage is among the ``k`` most similar of all the pairs' passages."""
    if len(pairs) < 2 or not isinstance(k, int) or k < 1:
        raise ValueError(f"need at least 2 pairs and a positive int k, got {len(pairs)} pairs and k={k!r}")
    model = model.eval()
    emb = [torch.cat([encode(model, tokenizer, texts[i:i + batch_size], max_length).cpu()
                      for i in range(0, len(texts), batch_size)])
           for texts in ([a for a, _ in pairs], [b for _, b in pairs])]
    sims = emb[0] @ emb[1].T                                        # [N queries, N passages]
    own = sims.diagonal()[:, None]
    rank = (sims > own).sum(dim=1)                                  # passages scored above the right one
    return float((rank < k).float().mean())
