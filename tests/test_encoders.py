"""Encoders: the embedded default (real all-MiniLM-L6-v2 weights) and precomputed vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sie_index import EncoderSpec, Index, PrecomputedEncoder, TokenStatesEncoder
from sie_index.encoders.base import Encoder, check_encoder_output
from sie_index.encoders.registry import encoder_from_spec, load_encoder
from sie_index.errors import (
    DimensionMismatch,
    EncoderMismatch,
    EncoderProtocolError,
    EncoderUnavailable,
    InvalidInput,
)


@pytest.fixture(scope="session")
def minilm() -> TokenStatesEncoder:
    return TokenStatesEncoder()


def test_default_encoder_gives_one_normalized_row_per_word_piece(
    minilm: TokenStatesEncoder,
) -> None:
    texts = ["GNU image manipulation program", "a lightweight web server", "x"]
    out = minilm.encode_documents(texts)
    assert isinstance(minilm, Encoder)
    assert minilm.spec.dim == 384 and minilm.spec.kind == "token-states"
    for text, vecs in zip(texts, out, strict=True):
        pieces = minilm.tokenizer.tokenize(text)  # no [CLS]/[SEP]: special tokens are dropped
        assert vecs.shape == (len(pieces), 384)
        assert vecs.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_length_sorting_keeps_the_input_order(minilm: TokenStatesEncoder) -> None:
    texts = ["a much longer text about compilers and linkers and debuggers", "short", "medium text"]
    batched = minilm.encode_documents(texts)
    alone = [minilm.encode_documents([t])[0] for t in texts]
    for b, a in zip(batched, alone, strict=True):
        assert b.shape == a.shape
        # bf16 autocast: padding changes rounding a little, never the meaning
        assert float((b * a).sum(axis=1).min()) > 0.98


def test_related_texts_score_higher(minilm: TokenStatesEncoder) -> None:
    from sie_index import maxsim

    q = minilm.encode_queries(["edit photos and images"])[0]
    docs = minilm.encode_documents(
        ["GIMP is a program to edit photos, paint and retouch images", "a DNS resolver library"]
    )
    s = maxsim(q, docs)
    assert s[0] > s[1]


def test_queries_are_truncated_to_query_maxlen(minilm: TokenStatesEncoder) -> None:
    long = " ".join(["word"] * 200)
    assert len(minilm.encode_queries([long])[0]) == minilm.query_maxlen - 2
    assert len(minilm.encode_documents([long])[0]) == min(200, minilm.doc_maxlen - 2)


def test_spec_names_the_weights_and_round_trips(minilm: TokenStatesEncoder) -> None:
    spec = minilm.spec
    assert len(spec.options["weights_sha256"]) == 16
    assert EncoderSpec.from_dict(spec.to_dict()) == spec
    assert spec.runtime["bf16"] == minilm.bf16  # the manifest says how vectors were computed
    again = encoder_from_spec(spec)
    assert again.spec == spec
    spec.check_query_encoder(again.spec)


def test_empty_text_is_rejected(minilm: TokenStatesEncoder) -> None:
    with pytest.raises(InvalidInput, match="text 1 is empty"):
        minilm.encode_queries(["fine", "   "])


def test_a_folder_without_a_model_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(EncoderUnavailable, match=r"no config\.json"):
        TokenStatesEncoder(tmp_path)
    with pytest.raises(InvalidInput, match="unknown encoder"):
        load_encoder("bm25")


def test_query_encoder_must_match_the_index_spec() -> None:
    built = EncoderSpec(kind="token-states", model="m", dim=4, options={"query_maxlen": 32})
    with pytest.raises(DimensionMismatch, match="gives 8-dim"):
        built.check_query_encoder(EncoderSpec(kind="token-states", model="m", dim=8))
    with pytest.raises(EncoderMismatch, match="not the encoder") as info:
        built.check_query_encoder(EncoderSpec(kind="token-states", model="other", dim=4))
    assert not isinstance(info.value, DimensionMismatch)
    pre = EncoderSpec(kind="precomputed", model="mine", dim=4)
    pre.check_query_encoder(EncoderSpec(kind="sie", model="any", dim=4))
    # the runtime (server URL, bf16) is how vectors were made, not what they are
    sie = EncoderSpec(kind="sie", model="m", dim=4, runtime={"url": "http://a:8080"})
    sie.check_query_encoder(EncoderSpec(kind="sie", model="m", dim=4, runtime={"url": "http://b"}))


def test_pickled_weights_are_never_loaded(tmp_path: Path) -> None:
    import shutil

    from sie_index.encoders.token_states import default_model_dir

    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04garbage that is no pickle")
    with pytest.raises(EncoderUnavailable, match="safetensors weights only") as info:
        TokenStatesEncoder(folder)
    assert "pytorch_model.bin" in str(info.value)


@pytest.mark.parametrize(
    ("outputs", "needle"),
    [
        ([np.ones((2, 4))], "2 inputs"),
        ([np.ones((2, 4)), np.ones((2, 3))], "result 1 has shape"),
        ([np.ones((2, 4)), np.full((1, 4), np.nan)], "NaN"),
        ([np.ones((2, 4)), np.ones((0, 4))], "n_tokens >= 1"),
    ],
)
def test_encoder_output_is_checked(outputs: list[np.ndarray], needle: str) -> None:
    with pytest.raises(EncoderProtocolError, match=needle):
        check_encoder_output(outputs, 2, 4, who="test encoder")


def test_precomputed_from_npy_folder_and_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {f"d{i}": rng.standard_normal((i + 2, 6)).astype(np.float32) for i in range(4)}
    folder = tmp_path / "vecs"
    folder.mkdir()
    for key, arr in arrays.items():
        np.save(folder / f"{key}.npy", arr)
    np.savez(tmp_path / "vecs.npz", **arrays)
    for source in (folder, tmp_path / "vecs.npz"):
        enc = PrecomputedEncoder(source)
        assert enc.spec.dim == 6
        got = enc.encode_documents(["d2", "d0"])
        np.testing.assert_allclose(np.linalg.norm(got[0], axis=1), 1.0, atol=1e-6)
        assert got[1].shape == (2, 6)
        with pytest.raises(InvalidInput, match="'missing'"):
            enc.encode_documents(["missing"])
    with open(folder / "obj.npy", "wb") as fh:  # an object array's header, no pickle payload
        header = {"descr": "|O", "fortran_order": False, "shape": (1,)}
        np.lib.format.write_array_header_1_0(fh, header)
    with pytest.raises(InvalidInput, match="without pickle"):
        PrecomputedEncoder(folder).encode_documents(["obj"])


def test_index_from_precomputed_folder(tmp_path: Path) -> None:
    from sie_index.corpus import Document

    rng = np.random.default_rng(1)
    folder = tmp_path / "vecs"
    folder.mkdir()
    docs = []
    for i in range(20):
        np.save(folder / f"p{i}.npy", rng.standard_normal((5, 8)).astype(np.float32))
        docs.append(Document(id=f"p{i}", text=f"document {i}"))
    index = Index.build(
        tmp_path / "idx", docs, encoder=PrecomputedEncoder(folder), index_kind="flat"
    )
    Q = np.load(folder / "p7.npy")
    assert index.search(Q, k=1)[0].external_id == "p7"
    assert index.search(Q, k=1, text=True)[0].text == "document 7"
    np.save(folder / "p3.npy", np.full((5, 8), np.inf, np.float32))
    with pytest.raises(InvalidInput, match="'p3'"):
        Index.build(tmp_path / "idx2", docs, encoder=PrecomputedEncoder(folder, dim=8))
    assert not (tmp_path / "idx2").exists()


def test_token_texts_name_every_vector_row(minilm: TokenStatesEncoder) -> None:
    texts = ["Tools to manage SSH keys!", "x"]
    for is_query in (False, True):
        names = minilm.token_texts(texts, is_query=is_query)
        encode = minilm.encode_queries if is_query else minilm.encode_documents
        assert [len(n) for n in names] == [len(v) for v in encode(texts)]
    assert minilm.token_texts(["Tools to manage SSH keys!"], is_query=False)[0] == [
        "tools",
        "to",
        "manage",
        "ss",
        "##h",
        "keys",
        "!",
    ]


def test_explain_names_the_tokens_on_the_api_and_the_cli(
    minilm: TokenStatesEncoder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sie_index import Document
    from sie_index.cli import main

    docs = [
        Document(id="ssh", text="OpenSSH key management tools"),
        Document(id="img", text="resize and crop photos"),
        Document(id="web", text="a small web server"),
    ]
    index = Index.build(tmp_path / "idx", docs, encoder=minilm)
    hit = index.search("manage ssh keys", k=1, explain=True)[0]
    assert hit.external_id == "ssh" and hit.text is None  # explain does not add the text
    assert hit.explain is not None
    assert [m.query_text for m in hit.explain] == ["manage", "ss", "##h", "keys"]
    doc_tokens = minilm.token_texts([docs[0].text], is_query=False)[0]
    assert all(m.doc_text == doc_tokens[m.doc_token] for m in hit.explain)
    assert dict((m.query_text, m.doc_text) for m in hit.explain)["##h"] == "##sh"
    assert sum(m.similarity for m in hit.explain) == pytest.approx(hit.score, abs=1e-4)
    # query vectors: no query text to name, the document side still named
    Q = minilm.encode_queries(["manage ssh keys"])[0]
    hit = index.search(Q, k=1, explain=True)[0]
    assert hit.explain and all(m.query_text is None and m.doc_text for m in hit.explain)
    capsys.readouterr()
    assert main(["search", str(tmp_path / "idx"), "manage ssh keys", "-k", "1", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "query token" in out and "document token" in out
    assert any(line.split()[:2] == ["##h", "##sh"] for line in out.splitlines())


def test_bf16_weights_stored_once_give_autocast_own_vectors() -> None:
    """Linear weights kept in bfloat16 (no cast on every forward) give exactly the
    vectors autocast gives from the float32 weights."""
    import torch

    from sie_index.encoders import token_states

    stored = TokenStatesEncoder(bf16=True)
    assert all(
        m.weight.dtype == torch.bfloat16
        for m in stored.model.modules()
        if isinstance(m, torch.nn.Linear)
    )
    original = token_states._linear_weights_to_bf16
    token_states._linear_weights_to_bf16 = lambda model, torch: None  # type: ignore[assignment]
    try:
        cast_each_time = TokenStatesEncoder(bf16=True)
    finally:
        token_states._linear_weights_to_bf16 = original
    texts = ["manage ssh keys", "a tiling window manager for X11 with many layouts"]
    for a, b in zip(
        stored.encode_documents(texts), cast_each_time.encode_documents(texts), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(
        stored.encode_queries(texts), cast_each_time.encode_queries(texts), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_linear_layers_packed_for_onednn_give_the_same_vectors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a bfloat16 CPU every linear layer is packed once at load
    (sie_index/encoders/packed_linear.py) and the vectors are those of the plain
    layers, bit for bit; a packed layer that disagrees on the probe is left plain."""
    import torch

    from sie_index.encoders import packed_linear, token_states

    if not token_states._bf16_supported():
        pytest.skip("this CPU has no bfloat16 products: nothing is packed")
    packed = TokenStatesEncoder()
    linears = sum(
        isinstance(m, torch.nn.Linear) for m in TokenStatesEncoder(bf16=False).model.modules()
    )
    assert packed.packed_layers == linears == 37  # 6 layers x 6, and the pooler
    assert not any(isinstance(m, torch.nn.Linear) for m in packed.model.modules())
    monkeypatch.setattr(packed_linear, "pack_linear_layers", lambda model: 0)
    plain = TokenStatesEncoder()
    assert plain.packed_layers == 0
    assert sum(isinstance(m, torch.nn.Linear) for m in plain.model.modules()) == linears
    texts = ["manage ssh keys", "a tiling window manager for X11 with many layouts"]
    for a, b in zip(packed.encode_documents(texts), plain.encode_documents(texts), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(packed.encode_queries(texts), plain.encode_queries(texts), strict=True):
        np.testing.assert_array_equal(a, b)
    # a layer whose packed product disagrees with the plain one stays plain
    layer = torch.nn.Linear(8, 4).to(torch.bfloat16)
    model = torch.nn.Sequential(layer)
    monkeypatch.undo()
    assert packed_linear.pack_linear_layers(model) == 1
    model = torch.nn.Sequential(layer)
    monkeypatch.setattr(packed_linear._PackedLinear, "forward", lambda self, x: x[:, :4] * 0 + 7)
    assert packed_linear.pack_linear_layers(model) == 0 and model[0] is layer


def test_one_text_is_encoded_on_one_thread_into_the_same_vectors(
    minilm: TokenStatesEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query encoded alone runs its forward pass on one thread (faster beside a
    search, sie_index/encoders/threads.py), gives the vectors a forward on every
    thread gives, and leaves torch's thread count as it was."""
    import contextlib

    import torch

    from sie_index.encoders import threads
    from sie_index.encoders.bert_replay import BertReplay

    torch.set_num_threads(2)  # what the 2-core machines run with
    monkeypatch.setattr(minilm, "_threads", 2)
    seen: list[tuple[str, int]] = []  # torch's thread count in each forward pass: (path, threads)
    hook = minilm.model.register_forward_pre_hook(
        lambda *_: seen.append(("model", torch.get_num_threads()))
    )
    replayed = BertReplay.__call__  # a lone text takes the replay (bert_replay.py)

    def counted(self: BertReplay, ids: torch.Tensor) -> torch.Tensor:
        seen.append(("replay", torch.get_num_threads()))
        return replayed(self, ids)

    monkeypatch.setattr(BertReplay, "__call__", counted)
    try:
        texts = ["manage ssh keys", "a tiling window manager for X11 with many layouts"]
        alone = [minilm.encode_queries([t])[0] for t in texts]
        assert seen == [("replay", 1), ("replay", 1)]
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)  # as a thread whose first torch work fell in a block
        together = minilm.encode_queries(texts)  # a batch runs on every thread again
        assert seen[2:] == [("model", 2)] and torch.get_num_threads() == 2
        monkeypatch.setattr(threads, "forward_threads", lambda *_: contextlib.nullcontext())
        every_thread = [minilm.encode_queries([t])[0] for t in texts]
        assert seen[3:] == [("replay", 2), ("replay", 2)]
    finally:
        hook.remove()
    for a, b in zip(alone, every_thread, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)  # padding in a batch may round apart


def test_a_lone_text_replays_the_model_bit_for_bit(
    minilm: TokenStatesEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One text (a query) runs the BERT replay (sie_index/encoders/bert_replay.py), not
    ``model(...)``, and gets the vectors ``model(...)`` gives, bit for bit; a batch runs
    the model as before."""
    assert minilm.replay is not None
    calls: list[int] = []
    hook = minilm.model.register_forward_pre_hook(lambda *_: calls.append(1))
    texts = [
        "x",
        "manage ssh keys",
        "GNU image manipulation program, for photos!",
        " ".join(["a tiling window manager for X11 with many layouts"] * 12),  # truncated
    ]
    try:
        replayed = [minilm.encode_queries([t])[0] for t in texts]
        documents = [minilm.encode_documents([t])[0] for t in texts]
        assert calls == []  # no text went through model(...)
        minilm.encode_queries(texts[:2])
        assert calls == [1]  # a batch does
        monkeypatch.setattr(minilm, "replay", None)
        plain = [minilm.encode_queries([t])[0] for t in texts]
        plain_documents = [minilm.encode_documents([t])[0] for t in texts]
    finally:
        hook.remove()
    assert replayed[-1].shape[0] == minilm.query_maxlen - 2  # [CLS] and [SEP] dropped
    for a, b in zip(replayed + documents, plain + plain_documents, strict=True):
        np.testing.assert_array_equal(a, b)


def _tiny_bert(**overrides: object) -> object:
    import torch
    from transformers import BertConfig, BertModel

    settings: dict[str, object] = {
        "vocab_size": 50,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 24,
        "max_position_embeddings": 20,
        "hidden_act": "gelu",
    }
    settings.update(overrides)
    torch.manual_seed(0)
    return BertModel(BertConfig(**settings), add_pooling_layer=False).eval()


def test_the_replay_is_refused_where_it_is_not_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model the replay does not reproduce at every length keeps ``model(...)``:
    another activation, eager attention, training mode, a feed-forward chunked along
    the text, not a BERT (each refused before any replay is made), or a replay the
    probe finds rounding differently. Where it is taken it equals the model on texts of
    every length that fits, and it takes only one unmasked text of token type 0."""
    import contextlib
    import types

    import torch

    from sie_index.encoders import bert_replay

    context = torch.inference_mode
    model = _tiny_bert()
    replay = bert_replay.bert_replay(model, context)
    assert replay is not None
    with context():
        for length in (1, 2, 7, 20):
            gen = torch.Generator().manual_seed(length)
            ids = torch.randint(0, 50, (1, length), generator=gen)
            want = model(input_ids=ids, attention_mask=torch.ones_like(ids))
            assert torch.equal(replay(ids), want.last_hidden_state)
    ones = torch.ones((1, 20), dtype=torch.long)
    assert replay.takes(ones, ones, ones * 0)
    assert not replay.takes(torch.ones((1, 21), dtype=torch.long))  # past the positions
    assert not replay.takes(torch.ones((2, 5), dtype=torch.long))  # a batch
    assert not replay.takes(ones, torch.cat([ones[:, :19], ones[:, :1] * 0], 1))  # masked
    assert not replay.takes(ones, ones, torch.cat([ones[:, :19] * 0, ones[:, :1]], 1))
    made: list[object] = []

    class Counted(bert_replay.BertReplay):
        def __init__(self, model: object) -> None:
            made.append(model)
            super().__init__(model)

    monkeypatch.setattr(bert_replay, "BertReplay", Counted)
    refused = [
        _tiny_bert(hidden_act="relu"),
        _tiny_bert(attn_implementation="eager"),
        _tiny_bert().train(),
        _tiny_bert(chunk_size_feed_forward=4),
        torch.nn.Linear(4, 4),
    ]
    assert all(bert_replay.bert_replay(m, contextlib.nullcontext) is None for m in refused)
    assert made == []  # refused by what they are, before any probe
    # a replay that rounds one operator differently is caught by the probe
    tanh_gelu = types.SimpleNamespace(**vars(torch.nn.functional))
    tanh_gelu.gelu = lambda x: torch.nn.functional.gelu(x, approximate="tanh")
    monkeypatch.setattr(bert_replay, "F", tanh_gelu)
    assert bert_replay.bert_replay(model, context) is None and made == [model]
