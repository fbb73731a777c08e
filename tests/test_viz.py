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


def test_explorer_label_and_caption_match_the_slider():
    box = viz.attention_explorer(["one sentence"], attention_fn=lambda s: (["a", "b"], fake_attentions(t=2)))
    tau = box.controls["temperature"]
    assert tau.style.description_width == "initial", "the 'temperature' label must not be cut short"
    tau.value = 0.223872
    assert "temperature 0.22)" in box.view.value and "0.223872" not in box.view.value


# ------------------------------------------------------------------ bertviz, offline
def test_vendored_js_matches_recorded_checksums():
    from importlib.resources import files

    static = files("course_utils").joinpath("static")
    sums = dict(line.split()[::-1] for line in static.joinpath("SHA256SUMS").read_text().splitlines())
    assert sums == viz._VENDORED_JS, "SHA256SUMS and viz._VENDORED_JS must list the same files and hashes"
    for name in viz._VENDORED_JS:
        text = viz.vendored_js(name)
        assert len(text) > 50_000 and "</script" not in text.lower()
    for lic in ("LICENSE-d3.txt", "LICENSE-jquery.txt"):
        assert static.joinpath(lic).read_text().strip(), f"{lic} must ship beside the code it licenses"
    with pytest.raises(ValueError, match="name must be one of"):
        viz.vendored_js("require.js")


def test_vendored_js_refuses_a_changed_file(monkeypatch):
    viz.vendored_js.cache_clear()
    monkeypatch.setitem(viz._VENDORED_JS, "d3-5.7.0.min.js", "0" * 64)
    try:
        with pytest.raises(RuntimeError, match="sha256"):
            viz.vendored_js("d3-5.7.0.min.js")
    finally:
        viz.vendored_js.cache_clear()


@pytest.mark.parametrize("kind", ["head", "model"])
def test_bertviz_views_are_self_contained(kind):
    pytest.importorskip("bertviz")
    att = fake_attentions(n_layers=2, n_heads=3, t=6)
    page = viz.bertviz_view_html(kind, att, TOKENS)
    assert page.startswith(f'<div class="cu-bertviz" data-view="{kind}">')
    for remote in ("cdnjs", "src=\"http", "require.config", "requirejs(", "require.min.js"):
        assert remote not in page, f"the offline view still names {remote!r}"
    assert page.count('<script type="text/javascript">') == 1 and page.count("</script>") == 1
    assert viz.vendored_js("d3-5.7.0.min.js") in page and viz.vendored_js("jquery-3.7.1.min.js") in page
    assert "(function ($, d3) {" in page and re.search(r"\}\)\(__cu_jq, __cu_d3\);\s*\}\)\(\);\s*</script>\s*</div>$", page)
    assert '"Ġcat"' not in page, "bertviz's prettify_tokens ran (Ġ removed)"
    # a stacked [L, H, T, T] tensor is accepted too and gives the same weights
    same = viz.bertviz_view_html(kind, viz.stack_attentions(att), TOKENS)
    strip_ids = lambda s: re.sub(r"bertviz-[0-9a-f]{32}", "ID", s)  # noqa: E731
    assert strip_ids(same) == strip_ids(page)


def test_bertviz_script_is_valid_javascript(tmp_path):
    """``node --check`` parses the generated script (skipped where Node.js is not installed;
    the browser test draws it for real)."""
    import shutil
    import subprocess

    pytest.importorskip("bertviz")
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js not installed")
    page = viz.bertviz_view_html("head", fake_attentions(), TOKENS)
    script = re.search(r'<script type="text/javascript">(.*)</script>', page, re.S).group(1)
    (tmp_path / "view.js").write_text(script)
    done = subprocess.run([node, "--check", str(tmp_path / "view.js")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_bertviz_views_reject_bad_input():
    pytest.importorskip("bertviz")
    with pytest.raises(ValueError, match="kind"):
        viz.bertviz_view_html("neuron", fake_attentions(), TOKENS)
    with pytest.raises(TypeError, match="tokens"):
        viz.bertviz_view_html("head", fake_attentions(), "the cat")
    html_obj = viz.bertviz_head_view(fake_attentions(), TOKENS)
    assert "cu-bertviz" in html_obj.data and "cu-bertviz" in viz.bertviz_model_view(fake_attentions(), TOKENS).data


def test_static_files_are_declared_package_data():
    """A wheel holds only the non-Python files pyproject.toml names as package data; without them
    an installed course_utils (Colab, pip install) could not draw bertviz's views offline."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    config = tomllib.loads((root / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"].get("package-data", {}).get("course_utils", [])
    shipped = sorted(p.name for p in (root / "course_utils" / "static").iterdir() if p.is_file())
    missing = [name for name in shipped if not any(fnmatch.fnmatch(f"static/{name}", g) for g in globs)]
    assert not missing, (f"add to pyproject.toml [tool.setuptools.package-data] course_utils = [...] a pattern "
                         f"for {missing}")
