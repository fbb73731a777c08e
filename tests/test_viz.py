"""course_utils.viz: the offline attention view, the explorer widget and the heatmap helper."""
from __future__ import annotations

import math
import re
from types import SimpleNamespace

import matplotlib
import pytest
import torch

from course_utils import viz

matplotlib.use("Agg")

TOKENS = ["[CLS]", "the", "Ġcat", "sat", "<b>", "[SEP]"]   # '<b>' checks HTML escaping


def fake_attentions(n_layers: int = 2, n_heads: int = 3, t: int = 6, batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.softmax(torch.randn(batch, n_heads, t, t, generator=g) * 2, -1) for _ in range(n_layers))


def test_stack_attentions_accepts_model_outputs():
    att = fake_attentions(batch=2)
    a = viz.stack_attentions(att, batch_index=1)
    assert a.shape == (2, 3, 6, 6)
    assert torch.equal(a[1], att[1][1])
    assert torch.equal(viz.stack_attentions(torch.stack(att), batch_index=1), a)   # [L, B, H, T, T]
    assert viz.stack_attentions(att[0][0]).shape == (1, 3, 6, 6)
    assert viz.stack_attentions(att[0][0, 0]).shape == (1, 1, 6, 6)
    with pytest.raises(ValueError, match="eager"):
        viz.stack_attentions((None, None))
    with pytest.raises(IndexError, match="batch_index"):
        viz.stack_attentions(att, batch_index=5)
    with pytest.raises(TypeError, match="tensor"):
        viz.stack_attentions("nope")


def test_apply_temperature_equals_softmax_of_scaled_scores():
    s = torch.randn(4, 7)
    p = torch.softmax(s, -1)
    for tau in (0.25, 1.0, 3.0):
        torch.testing.assert_close(viz.apply_temperature(p, tau), torch.softmax(s / tau, -1), atol=1e-5, rtol=0)
    masked = torch.tensor([[0.5, 0.5, 0.0]])
    assert float(viz.apply_temperature(masked, 0.1)[0, 2]) == 0.0
    with pytest.raises(ValueError, match="positive"):
        viz.apply_temperature(p, 0)


def count(html: str, cls: str) -> int:
    return len(re.findall(rf'class="{cls}"', html))


def test_view_layer_all_heads_draws_every_head_and_escapes_tokens():
    html = viz.attention_view_html(TOKENS, fake_attentions(), layer=1, view_id="v1")
    assert count(html, "cu-attn-head") == 3
    assert count(html, "cu-attn-lines") == 1 and count(html, "cu-attn-q") == len(TOKENS)
    assert all(f'id="v1-l1-h{h}"' in html for h in range(3))
    assert "&lt;b&gt;" in html and "<b>" not in html.replace("<b>Attention", "")
    assert "␣cat" in html                      # byte-level BPE marker prettified
    assert "<script" not in html and "http" not in html, "the offline view must not load anything"


def test_view_single_head_and_model_view():
    att = fake_attentions(n_layers=3, n_heads=2)
    one = viz.attention_view_html(TOKENS, att, layer=-1, head=1, view_id="v2")
    assert count(one, "cu-attn-head") == 1 and 'id="v2-l2-h1"' in one
    assert set(re.findall(r'data-head="(\d+)"', one)) == {"1"}
    model = viz.attention_view_html(TOKENS, att)
    assert count(model, "cu-attn-head") == 6
    assert 'data-layers="3" data-heads="2" data-tokens="6"' in model
    obj = viz.attention_view(TOKENS, att, 0)
    assert "cu-attn-view" in obj.data


def test_view_line_opacity_follows_weights():
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, :, 0] = 1.0                       # everyone attends to token 0
    html = viz.attention_view_html(["a", "b", "c"], w, layer=0, head=0)
    opac = [float(x) for x in re.findall(r'stroke-opacity="([\d.]+)"', html)]
    assert opac == [1.0, 1.0, 1.0]


def test_view_rejects_bad_input():
    att = fake_attentions()
    with pytest.raises(ValueError, match="4 tokens given"):
        viz.attention_view_html(TOKENS[:4], att)
    with pytest.raises(IndexError, match="layer"):
        viz.attention_view_html(TOKENS, att, layer=2)
    with pytest.raises(IndexError, match="head"):
        viz.attention_view_html(TOKENS, att, layer=0, head=3)


def test_plot_attention_single_and_grid():
    import matplotlib.pyplot as plt

    att = fake_attentions()[0][0]
    ax = viz.plot_attention(att[0], TOKENS, title="h0", annotate=True)
    assert ax.get_title() == "h0" and len(ax.get_xticklabels()) == 6
    fig = viz.plot_attention(att, TOKENS)
    assert len([a for a in fig.axes if a.get_title().startswith("head")]) == 3
    with pytest.raises(ValueError, match=r"\[T_q, T_k\]"):
        viz.plot_attention(att[0], TOKENS[:3])
    plt.close("all")


def test_explorer_widgets_update_the_view():
    att = fake_attentions(n_layers=2, n_heads=3)
    calls: list[str] = []

    def fn(sentence: str):
        calls.append(sentence)
        return TOKENS, att

    box = viz.attention_explorer(["one", "two"], attention_fn=fn)
    c = box.controls
    assert c["layer"].max == 1 and len(c["head"].options) == 4
    assert count(box.view.value, "cu-attn-head") == 3
    c["head"].value = 2
    assert count(box.view.value, "cu-attn-head") == 1 and 'data-head="2"' in box.view.value
    stats = box.children[2]
    ent = float(re.search(r"<b>([\d.]+)</b> nats", stats.value).group(1))
    c["temperature"].value = 10.0             # flatter: entropy grows toward log(6)
    ent_hot = float(re.search(r"<b>([\d.]+)</b> nats", stats.value).group(1))
    assert ent < ent_hot <= math.log(6) + 0.01
    c["sentence"].value = "two"
    c["sentence"].value = "one"
    assert calls == ["one", "two"], "results must be cached per sentence"
    with pytest.raises(ValueError, match="model and tokenizer"):
        viz.attention_explorer(["x"])
    with pytest.raises(ValueError, match="non-empty list"):
        viz.attention_explorer("a sentence", attention_fn=fn)


def test_model_attentions_with_a_fake_hf_model():
    class Tok:
        def __call__(self, text, return_tensors):
            return {"input_ids": torch.tensor([[0, 1, 2]]), "attention_mask": torch.ones(1, 3)}

        def convert_ids_to_tokens(self, ids):
            return [f"t{i}" for i in ids]

    class Model(torch.nn.Module):
        def __init__(self, give):
            super().__init__()
            self.lin, self.give = torch.nn.Linear(1, 1), give

        def forward(self, input_ids, attention_mask, output_attentions):
            att = (torch.full((1, 2, 3, 3), 1 / 3),) if self.give else (None,)
            return SimpleNamespace(attentions=att)

    toks, att = viz.model_attentions(Model(True), Tok(), "hi")
    assert toks == ["t0", "t1", "t2"] and att[0].shape == (1, 2, 3, 3)
    with pytest.raises(RuntimeError, match="eager"):
        viz.model_attentions(Model(False), Tok(), "hi")
