import pytest
import torch

from course_utils import pretrained


@pytest.fixture(scope="module")
def minilm():
    return pretrained.load_minilm()


def test_embeddings_are_unit_and_meaningful(minilm):
    model, tok = minilm
    e = pretrained.embed(["The king is dead.", "The monarch has died.", "I like pizza with cheese."], model, tok)
    assert e.shape == (3, 384)
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.3


def test_embed_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    model, tok = minilm
    st = SentenceTransformer(str(pretrained.assets.fetch("minilm")), device="cpu")
    texts = ["a short one", "a much longer sentence that needs padding in the batch"]
    ours = pretrained.embed(texts, model, tok)
    theirs = torch.tensor(st.encode(texts))
    assert (ours - theirs).abs().max() < 1e-5


def test_embed_bad_input(minilm):
    model, tok = minilm
    with pytest.raises(TypeError, match="sequence of strings"):
        pretrained.embed("one string", model, tok)
    with pytest.raises(ValueError, match="empty"):
        pretrained.embed([], model, tok)
    with pytest.raises(ValueError, match="expected hidden"):
        pretrained.mean_pool(torch.zeros(2, 3), torch.ones(2, 3))


def test_bad_source():
    with pytest.raises(ValueError, match="'local' reads the offline assets"):
        pretrained.load_minilm(source="internet")


def test_smollm2_answers_offline():
    model, tok = pretrained.load_smollm2()
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    batch = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
