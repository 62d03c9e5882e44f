"""Local ColBERT checkpoints: tiny random-weight checkpoints in both layouts, built here.

The oracle is a hand-written BERT forward pass (exact GELU, the checkpoint's
LayerNorm eps) over PyLate's token layout: [CLS], marker, text, [SEP]; queries
padded with [MASK]; documents without skiplist rows. Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sie_index import ColbertEncoder, Document, EncoderSpec, Index
from sie_index.encoders.registry import encoder_from_spec, load_encoder
from sie_index.encoders.token_states import default_model_dir
from sie_index.errors import EncoderUnavailable

HIDDEN, DIM, EPS = 32, 24, 1e-7
TEXTS = [
    "GNU image manipulation program, for photos!",
    "a web server",
    "tools to manage ssh keys (and agents)",
    "x",
]


def _bert(vocab_size: int, seed: int) -> tuple[object, dict[str, torch.Tensor]]:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        layer_norm_eps=EPS,
        hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = BertModel(config, add_pooling_layer=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.uniform_(0.5, 1.5)  # non-trivial gains and biases
            elif "LayerNorm.bias" in name or name.endswith(".bias"):
                p.normal_(0.0, 0.1)
            else:
                p.normal_(0.0, 0.2)
    return config, {k: v.contiguous() for k, v in model.state_dict().items()}


def _tokenizer(markers: list[str]) -> object:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(default_model_dir()), local_files_only=True)
    tok.add_tokens([m for m in markers if m not in tok.get_vocab()])
    return tok


def make_pylate(folder: Path, *, expansion: bool = True, attend: bool = False) -> Path:
    tok = _tokenizer(["[Q] ", "[D] "])
    config, state = _bert(len(tok), seed=1)  # type: ignore[arg-type]
    folder.mkdir(parents=True)
    tok.save_pretrained(str(folder))  # type: ignore[attr-defined]
    config.save_pretrained(str(folder))  # type: ignore[attr-defined]
    save_file(state, str(folder / "model.safetensors"))
    (folder / "1_Dense").mkdir()
    dense_cfg = {
        "in_features": HIDDEN,
        "out_features": DIM,
        "bias": True,
        "activation_function": "torch.nn.modules.linear.Identity",
    }
    (folder / "1_Dense" / "config.json").write_text(json.dumps(dense_cfg))
    g = torch.Generator().manual_seed(2)
    save_file(
        {
            "linear.weight": torch.randn(DIM, HIDDEN, generator=g) * 0.3,
            "linear.bias": torch.randn(DIM, generator=g) * 0.1,
        },
        str(folder / "1_Dense" / "model.safetensors"),
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    st = {
        "query_prefix": "[Q] ",
        "document_prefix": "[D] ",
        "query_length": 12,
        "document_length": 16,
        "do_query_expansion": expansion,
        "attend_to_expansion_tokens": attend,
        "skiplist_words": list(string.punctuation),
    }
    (folder / "config_sentence_transformers.json").write_text(json.dumps(st))
    return folder


def make_stanford(folder: Path) -> Path:
    tok = _tokenizer([])
    config, state = _bert(len(tok), seed=3)  # type: ignore[arg-type]
    config.architectures = ["HF_ColBERT"]  # type: ignore[attr-defined]
    folder.mkdir(parents=True)
    tok.save_pretrained(str(folder))  # type: ignore[attr-defined]
    config.save_pretrained(str(folder))  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(4)
    weights = {f"bert.{k}": v for k, v in state.items()}
    weights["linear.weight"] = torch.randn(DIM, HIDDEN, generator=g) * 0.3
    save_file(weights, str(folder / "model.safetensors"))
    meta = {
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "query_maxlen": 10,
        "doc_maxlen": 20,
        "attend_to_mask_tokens": False,
    }
    (folder / "artifact.metadata").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("colbert")
    return {
        "pylate": make_pylate(root / "pylate"),
        "stanford": make_stanford(root / "stanford"),
        "pylate-attend": make_pylate(root / "attend", attend=True),
        "pylate-noexp": make_pylate(root / "noexp", expansion=False),
    }


# -- the oracle: a hand-written forward pass ------------------------------------------------


def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + EPS) * w + b


def reference(folder: Path, text: str, *, is_query: bool) -> tuple[np.ndarray, list[int]]:
    """PyLate's vectors for one text, computed from the files by hand (float64)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    stanford = (folder / "artifact.metadata").is_file()
    if stanford:
        meta = json.loads((folder / "artifact.metadata").read_text())
        q_len, d_len = meta["query_maxlen"], meta["doc_maxlen"]
        markers = (meta["query_token_id"], meta["doc_token_id"])
        st = {
            "do_query_expansion": True,
            "attend_to_expansion_tokens": False,
            "skiplist_words": list(string.punctuation),
        }
        raw = load_file(str(folder / "model.safetensors"))
        W = {k.removeprefix("bert."): v.double() for k, v in raw.items()}
        dense = [(W["linear.weight"], None)]
    else:
        st = json.loads((folder / "config_sentence_transformers.json").read_text())
        q_len, d_len = st["query_length"], st["document_length"]
        markers = (st["query_prefix"], st["document_prefix"])
        W = {k: v.double() for k, v in load_file(str(folder / "model.safetensors")).items()}
        d = load_file(str(folder / "1_Dense" / "model.safetensors"))
        dense = [(d["linear.weight"].double(), d["linear.bias"].double())]
    vocab = tok.get_vocab()
    length = q_len if is_query else d_len
    pieces = tok.convert_tokens_to_ids(tok.tokenize(text.strip()))[: length - 3]
    ids = [tok.cls_token_id, vocab[markers[0 if is_query else 1]], *pieces, tok.sep_token_id]
    attend = [1] * len(ids)
    if is_query and st["do_query_expansion"]:
        pad = length - len(ids)
        ids += [tok.mask_token_id] * pad
        attend += [1 if st["attend_to_expansion_tokens"] else 0] * pad
    x = torch.tensor(ids)
    h = (
        W["embeddings.word_embeddings.weight"][x]
        + W["embeddings.position_embeddings.weight"][: len(ids)]
        + W["embeddings.token_type_embeddings.weight"][0]
    )
    h = _ln(h, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"])
    mask = torch.tensor([0.0 if a else -math.inf for a in attend], dtype=torch.float64)
    heads, dh = 4, HIDDEN // 4
    for layer in range(2):
        p = f"encoder.layer.{layer}."

        def lin(name: str, v: torch.Tensor, p: str = p) -> torch.Tensor:
            return v @ W[p + name + ".weight"].T + W[p + name + ".bias"]

        q, k, v = (
            lin(f"attention.self.{n}", h).view(-1, heads, dh).transpose(0, 1)
            for n in ("query", "key", "value")
        )
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dh) + mask, dim=-1)
        ctx = (att @ v).transpose(0, 1).reshape(-1, HIDDEN)
        h = _ln(
            h + lin("attention.output.dense", ctx),
            W[p + "attention.output.LayerNorm.weight"],
            W[p + "attention.output.LayerNorm.bias"],
        )
        inter = lin("intermediate.dense", h)
        inter = 0.5 * inter * (1.0 + torch.erf(inter / math.sqrt(2.0)))  # exact GELU
        h = _ln(
            h + lin("output.dense", inter),
            W[p + "output.LayerNorm.weight"],
            W[p + "output.LayerNorm.bias"],
        )
    for w, b in dense:
        h = h @ w.T + (0 if b is None else b)
    if not is_query:
        skip = set(tok.convert_tokens_to_ids(st["skiplist_words"]))
        keep = [i for i, t in enumerate(ids) if t not in skip]
        h, ids = h[keep], [ids[i] for i in keep]
    h = h / h.norm(dim=1, keepdim=True)
    return h.numpy(), ids


# -- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["pylate", "stanford", "pylate-attend", "pylate-noexp"])
@pytest.mark.parametrize("is_query", [False, True])
def test_vectors_equal_the_reference_forward_pass(
    checkpoints: dict[str, Path], layout: str, is_query: bool
) -> None:
    folder = checkpoints[layout]
    enc = ColbertEncoder(folder)
    encode = enc.encode_queries if is_query else enc.encode_documents
    batched = encode(TEXTS)
    ids = enc.token_ids(TEXTS, is_query=is_query)
    for text, got, got_ids in zip(TEXTS, batched, ids, strict=True):
        want, want_ids = reference(folder, text, is_query=is_query)
        assert got_ids == want_ids
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(encode([text])[0], want, atol=1e-5)  # one at a time
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_markers_lengths_and_expansion(checkpoints: dict[str, Path]) -> None:
    enc = ColbertEncoder(checkpoints["pylate"])
    tok = enc.tokenizer
    assert enc.spec.dim == DIM and enc.spec.kind == "colbert"
    q_ids = enc.token_ids(["tools to manage ssh keys"], is_query=True)[0]
    assert len(q_ids) == 12  # padded to query_length
    assert q_ids[0] == tok.cls_token_id and q_ids[1] == tok.convert_tokens_to_ids("[Q] ")
    assert q_ids[-1] == tok.mask_token_id and tok.sep_token_id in q_ids
    long = " ".join(["word"] * 50)
    assert len(enc.token_ids([long], is_query=True)[0]) == 12
    d_ids = enc.token_ids([long], is_query=False)[0]
    assert len(d_ids) == 16 and d_ids[1] == tok.convert_tokens_to_ids("[D] ")
    assert d_ids[-1] == tok.sep_token_id
    # skiplist rows are removed from documents, kept in queries
    d_ids = enc.token_ids(["hello, world!"], is_query=False)[0]
    assert tok.convert_tokens_to_ids(",") not in d_ids and len(d_ids) == 5
    stanford = ColbertEncoder(checkpoints["stanford"])
    ids = stanford.token_ids(["hello"], is_query=True)[0]
    assert ids[1] == tok.convert_tokens_to_ids("[unused0]") and len(ids) == 10
    assert stanford.token_ids(["hello"], is_query=False)[0][1] == tok.convert_tokens_to_ids(
        "[unused1]"
    )


def test_queries_without_expansion(checkpoints: dict[str, Path]) -> None:
    enc = ColbertEncoder(checkpoints["pylate-noexp"])
    ids = enc.token_ids(["a web server", "x"], is_query=True)
    assert [len(i) for i in ids] == [6, 4]  # unpadded: [CLS] [Q] ... [SEP]
    assert enc.tokenizer.mask_token_id not in ids[1]


def test_spec_round_trips_and_the_cli_name(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    enc = load_encoder(f"colbert:{checkpoints['stanford']}")
    spec = enc.spec
    assert spec.options["layout"] == "stanford" and spec.runtime["bf16"] is False
    assert EncoderSpec.from_dict(spec.to_dict()) == spec
    again = encoder_from_spec(spec)
    spec.check_query_encoder(again.spec)
    docs = [Document(id=f"d{i}", text=t) for i, t in enumerate(TEXTS)]
    index = Index.build(tmp_path / "i", docs, encoder=enc, index_kind="flat", progress=False)
    # random weights know no meaning, but a text finds itself
    assert index.search(TEXTS[2], k=1)[0].external_id == "d2"
    assert Index.open(tmp_path / "i").search(TEXTS[2], k=1)[0].external_id == "d2"


def test_pickled_or_missing_weights_are_refused(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    folder = tmp_path / "bin-only"
    shutil.copytree(checkpoints["stanford"], folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04garbage, not a pickle")
    with pytest.raises(EncoderUnavailable, match="safetensors weights only"):
        ColbertEncoder(folder)
    with pytest.raises(EncoderUnavailable, match="not a ColBERT checkpoint"):
        ColbertEncoder(tmp_path)


def _fake_hub_cache(root: Path, checkpoints: dict[str, Path]) -> None:
    """A Hugging Face cache as huggingface_hub lays it out: refs/main names the
    PyLate snapshot; an older Stanford snapshot sits beside it."""
    import shutil

    repo = root / "models--acme--tiny-colbert"
    shutil.copytree(checkpoints["pylate"], repo / "snapshots" / "abc123")
    shutil.copytree(checkpoints["stanford"], repo / "snapshots" / "old000")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123\n")


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_a_hub_id_is_found_in_the_local_cache(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.chdir(tmp_path)  # no folder named like the id here
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf" / "hub"
    _fake_hub_cache(cache, checkpoints)
    monkeypatch.setenv(variable, str(cache if variable == "HF_HUB_CACHE" else cache.parent))
    enc = ColbertEncoder("acme/tiny-colbert")
    assert enc.spec.model == "acme/tiny-colbert"  # not the snapshot's hash
    assert enc.spec.options["layout"] == "pylate"  # the snapshot refs/main names
    snapshot = cache / "models--acme--tiny-colbert" / "snapshots" / "abc123"
    assert Path(enc.spec.runtime["path"]) == snapshot.resolve()
    direct = ColbertEncoder(checkpoints["pylate"])
    for a, b in zip(enc.encode_queries(TEXTS), direct.encode_queries(TEXTS), strict=True):
        np.testing.assert_array_equal(a, b)
    assert load_encoder("colbert:acme/tiny-colbert").spec == enc.spec


def test_a_hub_id_not_in_the_cache_says_how_to_get_the_folder(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_hub_cache(tmp_path / "hub", checkpoints)
    (tmp_path / "hub" / "models--acme--tiny-colbert" / "refs" / "main").write_text("gone999")
    for missing in ("colbert-ir/colbertv2.0", "acme/tiny-colbert"):  # absent; ref to nothing
        with pytest.raises(EncoderUnavailable) as info:
            ColbertEncoder(missing)
        message = str(info.value)
        assert "not in the local cache" in message and str(tmp_path / "hub") in message
        assert f"huggingface-cli download {missing} --local-dir" in message
        assert "model.safetensors" in message and "modules.json" in message


@pytest.mark.parametrize("layout", ["pylate", "stanford", "pylate-noexp"])
@pytest.mark.parametrize("is_query", [False, True])
def test_token_texts_name_every_vector_row(
    checkpoints: dict[str, Path], layout: str, is_query: bool
) -> None:
    enc = ColbertEncoder(checkpoints[layout])
    texts = enc.token_texts(TEXTS, is_query=is_query)
    ids = enc.token_ids(TEXTS, is_query=is_query)
    for got, want in zip(texts, ids, strict=True):
        assert got == enc.tokenizer.convert_ids_to_tokens(want)


@pytest.mark.parametrize("bf16", [False, True])
def test_a_lone_unpadded_text_replays_the_model_bit_for_bit(
    checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch, bf16: bool
) -> None:
    """One text with every position attended (a document, or a query where expansion
    tokens are attended or absent) runs the BERT replay (sie_index/encoders/bert_replay.py)
    and gets the vectors ``model(...)`` gives, bit for bit; a query padded with masked
    expansion tokens runs the model."""
    replays, unmasked = {}, {}
    for layout in ("pylate", "stanford", "pylate-attend", "pylate-noexp"):
        enc = ColbertEncoder(checkpoints[layout], bf16=bf16)
        assert enc.replay is not None
        calls: list[int] = []
        hook = enc.model.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        try:
            got = [enc.encode_queries([t])[0] for t in TEXTS]
            got += [enc.encode_documents([t])[0] for t in TEXTS]
            replays[layout] = len(TEXTS) * 2 - len(calls)
            full = [enc._tokenize([t], True)["attention_mask"].all() for t in TEXTS]
            unmasked[layout] = sum(bool(f) for f in full)
            with monkeypatch.context() as m:
                m.setattr(enc, "replay", None)
                want = [enc.encode_queries([t])[0] for t in TEXTS]
                want += [enc.encode_documents([t])[0] for t in TEXTS]
        finally:
            hook.remove()
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    # documents always replay; queries where nothing is masked: a query that fills
    # the query length, or any query where expansion tokens are attended or absent
    assert unmasked == {"pylate": 1, "stanford": 2, "pylate-attend": 4, "pylate-noexp": 4}
    assert replays == {k: len(TEXTS) + n for k, n in unmasked.items()}
