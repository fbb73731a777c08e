"""Seeing attention: matplotlib heatmaps, an offline HTML/SVG view and an ipywidgets explorer.

bertviz draws beautiful views, but it loads require.js, d3 and jQuery from a CDN, so offline (and
in JupyterLab 4, which has no require.js) it shows "Javascript Error: require is not defined".
:func:`bertviz_head_view` and :func:`bertviz_model_view` draw bertviz's own views with no network:
they inline d3 and jQuery, shipped with this package in ``course_utils/static/`` (checked against
their sha256), and run bertviz's script without require.js.
:func:`attention_view` needs no script at all: it returns plain HTML with inline SVG and
a few CSS rules. Its DOM is stable for tests and for readers' own styling:

* ``div.cu-attn-view`` (``data-layers``, ``data-heads``, ``data-tokens``) holds everything;
* ``svg.cu-attn-lines``: bertviz-like lines from each query token (left) to the keys (right),
  one ``g.cu-attn-q`` per query; hover a token to see only its lines;
* ``svg.cu-attn-head`` (``data-layer``, ``data-head``, id ``<view id>-l<L>-h<H>``): one heatmap per
  head drawn, rows = queries, columns = keys, darker = more weight.

Defined in chapter 3, Attention math.
"""
from __future__ import annotations

import functools
import hashlib
import html
import importlib.resources
import itertools
import math
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["stack_attentions", "apply_temperature", "prettify_tokens", "model_attentions",
           "attention_view_html", "attention_view", "plot_attention", "attention_explorer",
           "vendored_js", "bertviz_view_html", "bertviz_head_view", "bertviz_model_view"]

HEAD_COLORS: tuple[str, ...] = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                                "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939")
_COUNTER = itertools.count()
_CSS = """<style>
.cu-attn-view{font-family:sans-serif;font-size:12px;color:#222;background:#fff;padding:4px}
.cu-attn-view .cu-attn-row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.cu-attn-view .cu-attn-grid{display:grid;gap:6px}
.cu-attn-view .cu-attn-cell{text-align:center;font-size:11px}
.cu-attn-view svg text{font-family:monospace;font-size:12px}
.cu-attn-lines:hover .cu-attn-q{opacity:.08}
.cu-attn-lines .cu-attn-q:hover{opacity:1}
</style>"""


# --------------------------------------------------------------------------- data helpers
def stack_attentions(attentions: Any, batch_index: int = 0) -> Tensor:
    """Bring attention weights to one float tensor ``[L, H, T_q, T_k]`` on the CPU.

    Accepts what models return: a tuple/list of per-layer ``[B, H, T, T]`` (``output_attentions``),
    or per-layer ``[H, T, T]``, or a tensor ``[L, B, H, T, T]``, ``[L, H, T, T]``, ``[H, T, T]``
    (one layer) or ``[T, T]`` (one head). ``batch_index`` picks the sequence of a batch.

    Defined in chapter 3, Attention math.
    """
    if isinstance(attentions, (tuple, list)):
        if not attentions or any(a is None for a in attentions):
            raise ValueError("attentions is empty or holds None: load Hugging Face models with "
                             "attn_implementation='eager' and call them with output_attentions=True")
        layers = [_layer_from_batch(a, batch_index) if a.dim() == 4 else a for a in attentions]
        if any(layer.dim() != 3 for layer in layers):
            raise ValueError("each layer must be [B, H, T, T] or [H, T, T]")
        if len({tuple(layer.shape) for layer in layers}) != 1:
            raise ValueError(f"layers differ in shape: {sorted({tuple(x.shape) for x in layers})}")
        return torch.stack([layer.detach().float().cpu() for layer in layers])
    if not isinstance(attentions, Tensor):
        raise TypeError(f"attentions must be a tensor or a tuple of tensors, got {type(attentions).__name__}")
    a = attentions.detach().float().cpu()
    if a.dim() == 5:
        if not 0 <= batch_index < a.shape[1]:
            raise IndexError(f"batch_index {batch_index} out of range for batch of {a.shape[1]}")
        return a[:, batch_index]
    if a.dim() == 4:   # a single layer [B, H, T, T] when coming from a tuple, else [L, H, T, T]
        return a
    if a.dim() == 3:
        return a[None]
    if a.dim() == 2:
        return a[None, None]
    raise ValueError(f"attention tensor must have 2 to 5 dims, got shape {tuple(a.shape)}")


def _layer_from_batch(a: Tensor, batch_index: int) -> Tensor:
    if not 0 <= batch_index < a.shape[0]:
        raise IndexError(f"batch_index {batch_index} out of range for batch of {a.shape[0]}")
    return a[batch_index]


def apply_temperature(weights: Tensor, temperature: float) -> Tensor:
    """Re-sharpen (τ < 1) or flatten (τ > 1) attention rows: ``softmax(s / τ)`` from ``softmax(s)``.

    Since ``softmax(s)_j ∝ exp(s_j)``, ``softmax(s/τ)_j ∝ p_j^(1/τ)``: no scores needed. Masked
    entries (weight 0) stay 0. Works on any ``[..., T_k]``.

    Defined in chapter 3, Attention math.
    """
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if temperature == 1:
        return weights
    logp = torch.where(weights > 0, weights.clamp_min(1e-30).log(), torch.full_like(weights, -math.inf))
    return torch.softmax(logp / temperature, dim=-1)


def prettify_tokens(tokens: Sequence[str]) -> list[str]:
    """Readable labels: byte-level BPE ``Ġ``/``Ċ`` and SentencePiece ``▁`` markers replaced.

    Defined in chapter 3, Attention math.
    """
    return [str(t).replace("Ġ", "␣").replace("▁", "␣").replace("Ċ", "⏎").replace("\n", "⏎") for t in tokens]


def model_attentions(model: Any, tokenizer: Any, text: str, **call_kwargs: Any) -> tuple[list[str], tuple[Tensor, ...]]:
    """Run a Hugging Face model on ``text``; return ``(tokens, attentions)`` (``[1, H, T, T]`` per layer).

    Load the model with ``attn_implementation="eager"`` so that attention weights exist.

    Defined in chapter 3, Attention math.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty string")
    enc = tokenizer(text, return_tensors="pt")
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    with torch.no_grad():
        out = model(**enc, output_attentions=True, **call_kwargs)
    attentions = getattr(out, "attentions", None)
    if not attentions or any(a is None for a in attentions):
        raise RuntimeError("the model returned no attention weights; load it with attn_implementation='eager'")
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    return list(tokens), tuple(a.detach().cpu() for a in attentions)


# --------------------------------------------------------------------------- offline HTML view
def _shade(w: float) -> str:
    """White (0) to dark blue (1)."""
    w = min(max(w, 0.0), 1.0)
    r, g, b = (round(255 + (c - 255) * w) for c in (8, 48, 107))
    return f"#{r:02x}{g:02x}{b:02x}"


def _heatmap_svg(w: Tensor, view_id: str, layer: int, head: int, cell: int, labels: list[str] | None) -> str:
    t_q, t_k = w.shape
    pad = 0 if labels is None else 7 * max(len(s) for s in labels) + 6
    width, height = pad + t_k * cell, pad + t_q * cell
    parts = [f'<svg class="cu-attn-head" id="{view_id}-l{layer}-h{head}" data-layer="{layer}" '
             f'data-head="{head}" width="{width}" height="{height}" '
             f'style="border:1px solid {HEAD_COLORS[head % len(HEAD_COLORS)]}">'
             f'<title>layer {layer}, head {head}</title><rect width="{width}" height="{height}" fill="#fff"/>']
    parts.append(f'<g transform="translate({pad},{pad}) scale({cell})">')   # one unit = one cell
    for i in range(t_q):
        for j in range(t_k):
            v = float(w[i, j])
            if v >= 0.01:
                parts.append(f'<rect x="{j}" y="{i}" width="1" height="1" fill="{_shade(v)}"/>')
    parts.append("</g>")
    if labels is not None:
        for i, s in enumerate(labels):
            y = pad + i * cell + cell * 0.7
            parts.append(f'<text x="{pad - 4}" y="{y:.1f}" text-anchor="end">{html.escape(s)}</text>')
            x = pad + i * cell + cell * 0.7
            parts.append(f'<text transform="translate({x:.1f},{pad - 4}) rotate(-90)">{html.escape(s)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _lines_svg(a: Tensor, heads: list[int], labels: list[str]) -> str:
    """Lines from query ``i`` (left column) to key ``j`` (right column), opacity = weight."""
    t = len(labels)
    row, colw, gap = 20, 7 * max(len(s) for s in labels) + 12, 140
    width, height = 2 * colw + gap, row * t + 10
    parts = [f'<svg class="cu-attn-lines" width="{width}" height="{height}" data-heads="{",".join(map(str, heads))}">']
    for j, s in enumerate(labels):   # keys on the right
        parts.append(f'<text x="{colw + gap + 4}" y="{row * j + 18}">{html.escape(s)}</text>')
    for i, s in enumerate(labels):   # one group per query: its label and its lines
        parts.append(f'<g class="cu-attn-q" data-query="{i}"><text x="{colw - 4}" y="{row * i + 18}" '
                     f'text-anchor="end">{html.escape(s)}</text>')
        for h in heads:
            color = HEAD_COLORS[h % len(HEAD_COLORS)]
            for j in range(a.shape[-1]):
                v = float(a[h, i, j])
                if v >= 0.02:
                    parts.append(f'<line class="cu-attn-line" data-head="{h}" x1="{colw}" y1="{row * i + 14}" '
                                 f'x2="{colw + gap}" y2="{row * j + 14}" stroke="{color}" '
                                 f'stroke-width="2" stroke-opacity="{v:.3f}"/>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def attention_view_html(tokens: Sequence[str], attentions: Any, layer: int | None = None,
                        head: int | None = None, *, temperature: float = 1.0, batch_index: int = 0,
                        prettify: bool = True, view_id: str | None = None, title: str | None = None) -> str:
    """The HTML string behind :func:`attention_view` (used directly by the explorer widget).

    ``view_id`` (default: a fresh unique id) prefixes the ids of the drawn heads.
    Defined in chapter 3, Attention math.
    """
    a = apply_temperature(stack_attentions(attentions, batch_index), temperature)   # [L, H, T, T]
    n_layers, n_heads, t_q, t_k = a.shape
    if t_q != t_k or len(tokens) != t_k:
        raise ValueError(f"need self-attention over the {len(tokens)} tokens given, got weights "
                         f"[L={n_layers}, H={n_heads}, {t_q}, {t_k}]")
    for name, val, n in (("layer", layer, n_layers), ("head", head, n_heads)):
        if val is not None and not (isinstance(val, int) and -n <= val < n):
            raise IndexError(f"{name} must be an int in [0, {n}), got {val!r}")
    layer = None if layer is None else layer % n_layers
    head = None if head is None else head % n_heads
    labels = prettify_tokens(tokens) if prettify else [str(t) for t in tokens]
    view_id = view_id or f"cu-attn-view-{next(_COUNTER)}-{uuid.uuid4().hex[:6]}"
    cell = max(3, min(10, 160 // t_k))
    heads = list(range(n_heads)) if head is None else [head]
    body = []
    if layer is None:   # model view: one small heatmap per (layer, head)
        grid = [f'<div class="cu-attn-grid" style="grid-template-columns:auto repeat({len(heads)},auto)">',
                "<div></div>"] + [f'<div class="cu-attn-cell">head {h}</div>' for h in heads]
        for li in range(n_layers):
            grid.append(f'<div class="cu-attn-cell">layer {li}</div>')
            grid += [f'<div class="cu-attn-cell">{_heatmap_svg(a[li, h], view_id, li, h, cell, None)}</div>'
                     for h in heads]
        body.append("".join(grid) + "</div>")
    else:
        legend = " ".join(f'<span style="color:{HEAD_COLORS[h % len(HEAD_COLORS)]}">■ head {h}</span>' for h in heads)
        left = f"<div><div>{legend}</div>{_lines_svg(a[layer], heads, labels)}</div>"
        if head is None:
            thumbs = "".join(f'<div class="cu-attn-cell">{_heatmap_svg(a[layer, h], view_id, layer, h, cell, None)}'
                             f"<br>head {h}</div>" for h in heads)
            cols = min(4, n_heads)
            right = f'<div class="cu-attn-grid" style="grid-template-columns:repeat({cols},auto)">{thumbs}</div>'
        else:
            right = _heatmap_svg(a[layer, head], view_id, layer, head, max(cell, 16), labels)
        body.append(f'<div class="cu-attn-row">{left}{right}</div>')
    where = "all layers" if layer is None else f"layer {layer}"
    caption = title or f"Attention, {where}, {'all heads' if head is None else f'head {head}'}"
    if temperature != 1:
        caption += f" (temperature {temperature:.2f})"   # as the explorer's slider shows it
    return (f'{_CSS}<div class="cu-attn-view" id="{view_id}" data-layers="{n_layers}" data-heads="{n_heads}" '
            f'data-tokens="{t_k}"><div><b>{html.escape(caption)}</b> &middot; left: queries, right: keys; '
            f"heatmap rows = queries, columns = keys</div>{''.join(body)}</div>")


def attention_view(tokens: Sequence[str], attentions: Any, layer: int | None = None,
                   head: int | None = None, **kwargs: Any) -> Any:
    """Offline attention view (no network, no scripts) as an ``IPython.display.HTML``.

    ``layer=None``: a grid of heatmaps, one per layer and head (like bertviz's model view).
    ``layer=L``: lines between tokens for every head of layer L in its colour, plus one heatmap
    per head (like bertviz's head view); add ``head=h`` for a single head with a labelled heatmap.
    ``attentions`` is anything :func:`stack_attentions` accepts; ``temperature`` (keyword)
    sharpens or flattens the weights with :func:`apply_temperature`.

    Defined in chapter 3, Attention math.
    """
    from IPython.display import HTML

    return HTML(attention_view_html(tokens, attentions, layer, head, **kwargs))


# --------------------------------------------------------------------------- bertviz, offline
# The JavaScript bertviz needs, shipped in course_utils/static/ (see its README.md for sources and
# licences). The sha256 of each file is checked before it is inlined into an output.
_VENDORED_JS: dict[str, str] = {
    "d3-5.7.0.min.js": "bdad5585ef9a965ff25458738309b006058c55f2c78d794d25fbecae35014609",
    "jquery-3.7.1.min.js": "fc9a93dd241f6b045cbff0481cf4e1901becd0e12fb45166a8f17f95823f0b1a",
}
_REQUIRE_TAG = re.compile(r'<script src="[^"]*require(?:\.min)?\.js"></script>')
_INLINE_SCRIPT = re.compile(r'<script type="text/javascript">(.*)</script>', re.S)
_REQUIRE_CONFIG = re.compile(r"require\.config\(\{.*?\}\);", re.S)
_REQUIRE_CALL = re.compile(r"requirejs\(\s*\[\s*'jquery'\s*,\s*'d3'\s*\]\s*,\s*function\s*\(\s*\$\s*,\s*d3\s*\)\s*\{")


@functools.lru_cache(maxsize=None)
def vendored_js(name: str) -> str:
    """The text of a JavaScript file shipped in ``course_utils/static/``, after checking its sha256.

    Raises ``ValueError`` for a name not shipped and ``RuntimeError`` when the file is missing or
    its content differs from the recorded checksum (a damaged or edited install).
    """
    if name not in _VENDORED_JS:
        raise ValueError(f"name must be one of {sorted(_VENDORED_JS)}, got {name!r}")
    try:
        data = importlib.resources.files("course_utils").joinpath("static", name).read_bytes()
    except FileNotFoundError:
        raise RuntimeError(f"course_utils/static/{name} is missing from this install: reinstall the "
                           "course package (pip install -e .)") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != _VENDORED_JS[name]:
        raise RuntimeError(f"course_utils/static/{name} has sha256 {digest}, expected {_VENDORED_JS[name]}")
    text = data.decode("utf-8")
    if "</script" in text.lower():   # would end the inline <script> element early
        text = re.sub(r"</(script)", r"<\\/\1", text, flags=re.I)
    return text


def _offline_bertviz_script(js: str) -> str:
    """bertviz's view script with require.js taken out: the body runs with inlined jQuery and d3.

    The libraries are evaluated inside a function as CommonJS modules, so they set no globals and
    do not touch an AMD ``define`` the page may have.
    """
    if not _REQUIRE_CALL.search(js) or not js.rstrip().endswith("});"):
        raise RuntimeError("this bertviz version's script has an unexpected shape (requirejs(['jquery', 'd3'], "
                           "function ($, d3) {...}) expected); the offline views support bertviz 1.4")
    body = _REQUIRE_CALL.sub("(function ($, d3) {", _REQUIRE_CONFIG.sub("", js), count=1)
    body = body.rstrip()[:-3] + "})(__cu_jq, __cu_d3);"
    cjs = ("function __cu_cjs(factory) { var m = {exports: {}}; factory.call(m.exports, m, m.exports, undefined); "
           "return m.exports; }\n")
    d3 = f"var __cu_d3 = __cu_cjs(function (module, exports, define) {{\n{vendored_js('d3-5.7.0.min.js')}\n}});\n"
    jq = f"var __cu_jq = __cu_cjs(function (module, exports, define) {{\n{vendored_js('jquery-3.7.1.min.js')}\n}});\n"
    return f"(function () {{\n{cjs}{d3}{jq}{body}\n}})();"


def bertviz_view_html(kind: str, attention: Any, tokens: Sequence[str], **kwargs: Any) -> str:
    """The HTML of bertviz's ``"head"`` or ``"model"`` view, self-contained (no network, no require.js).

    ``attention`` is what bertviz takes (a tuple of per-layer ``[1, H, T, T]`` tensors, as
    :func:`model_attentions` returns); ``kwargs`` go to ``bertviz.head_view`` / ``model_view``
    (``layer``, ``heads``, ``include_layers``, ``include_heads``, ``sentence_b_start``, ...). The
    result is wrapped in ``div.cu-bertviz[data-view=kind]``; bertviz's script draws its SVG inside.

    Defined in chapter 3, Attention math.
    """
    if kind not in ("head", "model"):
        raise ValueError(f"kind must be 'head' or 'model', got {kind!r}")
    if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
        raise TypeError("tokens must be a list of strings")
    import bertviz

    view = bertviz.head_view if kind == "head" else bertviz.model_view
    if isinstance(attention, Tensor):   # bertviz wants one [1, H, T, T] tensor per layer
        attention = tuple(stack_attentions(attention)[:, None])
    page = view(attention, list(tokens), html_action="return", **kwargs).data
    page = _REQUIRE_TAG.sub("", page)
    match = _INLINE_SCRIPT.search(page)
    if match is None:
        raise RuntimeError("bertviz returned no inline script; the offline views support bertviz 1.4")
    script = _offline_bertviz_script(match.group(1))
    page = page[:match.start()] + f'<script type="text/javascript">\n{script}\n</script>' + page[match.end():]
    return f'<div class="cu-bertviz" data-view="{kind}">{page}</div>'


def bertviz_head_view(attention: Any, tokens: Sequence[str], **kwargs: Any) -> Any:
    """bertviz's head view as a self-contained ``IPython.display.HTML`` that works offline.

    Same arguments as ``bertviz.head_view`` (see :func:`bertviz_view_html`). Without bertviz
    installed it returns a one-line note instead of failing.

    Defined in chapter 3, Attention math.
    """
    return _bertviz_display("head", attention, tokens, **kwargs)


def bertviz_model_view(attention: Any, tokens: Sequence[str], **kwargs: Any) -> Any:
    """bertviz's model view (every layer × head) as a self-contained ``IPython.display.HTML``.

    Same arguments as ``bertviz.model_view``; see :func:`bertviz_head_view`.

    Defined in chapter 3, Attention math.
    """
    return _bertviz_display("model", attention, tokens, **kwargs)


def _bertviz_display(kind: str, attention: Any, tokens: Sequence[str], **kwargs: Any) -> Any:
    from IPython.display import HTML

    try:
        import bertviz  # noqa: F401
    except ImportError:
        return HTML("<p>bertviz is not installed (<code>pip install bertviz</code>); "
                    "<code>viz.attention_view</code> draws the same weights without it.</p>")
    return HTML(bertviz_view_html(kind, attention, tokens, **kwargs))


# --------------------------------------------------------------------------- matplotlib
def plot_attention(weights: Tensor, tokens: Sequence[str], tokens_k: Sequence[str] | None = None, *,
                   ax: Any = None, title: str | None = None, cmap: str = "Blues", annotate: bool = False) -> Any:
    """Heatmap of ``[T_q, T_k]`` weights (returns the Axes) or a grid of ``[H, T_q, T_k]`` (the Figure).

    Rows are queries (``tokens``), columns are keys (``tokens_k``, default ``tokens``).

    Defined in chapter 3, Attention math.
    """
    import matplotlib.pyplot as plt

    if not isinstance(weights, Tensor):
        weights = torch.as_tensor(weights)
    w = weights.detach().float().cpu()
    tokens_k = tokens if tokens_k is None else tokens_k
    if w.dim() == 3:
        n = w.shape[0]
        cols = min(4, n)
        fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(3.2 * cols, 3.2 * math.ceil(n / cols)),
                                 squeeze=False)
        for h, axh in enumerate(axes.flat):
            if h < n:
                plot_attention(w[h], tokens, tokens_k, ax=axh, title=f"head {h}", cmap=cmap)
            else:
                axh.axis("off")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig
    if w.dim() != 2 or w.shape != (len(tokens), len(tokens_k)):
        raise ValueError(f"weights must be [T_q, T_k] = [{len(tokens)}, {len(tokens_k)}] or [H, T_q, T_k], "
                         f"got {tuple(w.shape)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(0.35 * len(tokens_k) + 2, 0.35 * len(tokens) + 1.5))
    im = ax.imshow(w.numpy(), cmap=cmap, vmin=0, vmax=max(1e-9, float(w.max())))
    ax.set_xticks(range(len(tokens_k)), prettify_tokens(tokens_k), rotation=90, fontsize=8)
    ax.set_yticks(range(len(tokens)), prettify_tokens(tokens), fontsize=8)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if annotate:
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                ax.text(j, i, f"{float(w[i, j]):.2f}", ha="center", va="center", fontsize=6,
                        color="white" if w[i, j] > 0.5 * w.max() else "black")
    if title:
        ax.set_title(title)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


# --------------------------------------------------------------------------- ipywidgets explorer
def attention_explorer(sentences: Sequence[str], model: Any = None, tokenizer: Any = None, *,
                       attention_fn: Callable[[str], tuple[Sequence[str], Any]] | None = None) -> Any:
    """An ipywidgets panel: pick a sentence, a layer, a head (or all) and a temperature.

    Give a Hugging Face ``model`` and ``tokenizer`` (loaded with ``attn_implementation="eager"``),
    or ``attention_fn(sentence) -> (tokens, attentions)`` for any other model. Results are cached
    per sentence. The drawing is :func:`attention_view_html` in a ``widgets.HTML`` (works offline);
    the returned ``VBox`` exposes ``.controls`` (dict of widgets), ``.view`` and ``.refresh()``.

    Defined in chapter 3, Attention math.
    """
    import ipywidgets as widgets

    from .attention import attention_entropy

    if isinstance(sentences, str) or not sentences or not all(isinstance(s, str) and s for s in sentences):
        raise ValueError("sentences must be a non-empty list of non-empty strings")
    if attention_fn is None:
        if model is None or tokenizer is None:
            raise ValueError("give model and tokenizer, or attention_fn(sentence) -> (tokens, attentions)")
        attention_fn = lambda s: model_attentions(model, tokenizer, s)  # noqa: E731
    cache: dict[str, tuple[list[str], Tensor]] = {}

    def get(sentence: str) -> tuple[list[str], Tensor]:
        if sentence not in cache:
            toks, att = attention_fn(sentence)
            cache[sentence] = (list(toks), stack_attentions(att))
        return cache[sentence]

    _, a0 = get(sentences[0])
    n_layers, n_heads = a0.shape[:2]
    controls = {
        "sentence": widgets.Dropdown(options=list(sentences), value=sentences[0], description="sentence",
                                     layout=widgets.Layout(width="600px")),
        "layer": widgets.IntSlider(value=0, min=0, max=n_layers - 1, description="layer"),
        "head": widgets.Dropdown(options=[("all", -1)] + [(str(h), h) for h in range(n_heads)], value=-1,
                                 description="head"),
        "temperature": widgets.FloatLogSlider(value=1.0, base=10, min=-1, max=1, step=0.05,
                                              description="temperature", readout_format=".2f",
                                              style={"description_width": "initial"}),   # label in full
    }
    stats = widgets.HTML()
    view = widgets.HTML()

    def refresh(*_: Any) -> None:
        toks, att = get(controls["sentence"].value)
        layer, head, tau = controls["layer"].value, controls["head"].value, controls["temperature"].value
        h = None if head < 0 else head
        view.value = attention_view_html(toks, att, layer, h, temperature=tau)
        w = apply_temperature(att[layer] if h is None else att[layer, h], tau)
        ent = float(attention_entropy(w).mean())
        stats.value = (f"mean entropy of the rows shown: <b>{ent:.2f}</b> nats (uniform over {len(toks)} "
                       f"tokens = {math.log(len(toks)):.2f}); mean max weight <b>{float(w.amax(-1).mean()):.2f}</b>")

    for c in controls.values():
        c.observe(refresh, names="value")
    refresh()
    box = widgets.VBox([widgets.HBox([controls["sentence"]]),
                        widgets.HBox([controls["layer"], controls["head"], controls["temperature"]]), stats, view])
    box.add_class("cu-attn-explorer")
    box.controls, box.view, box.refresh = controls, view, refresh  # type: ignore[attr-defined]
    return box
