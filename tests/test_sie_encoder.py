"""The SIE encoder against a real loopback HTTP server backed by the default local encoder.

The server (tests/sie_server.py) speaks the SIE wire format and, scripted, every
fault the client must survive or refuse. No performance timings; a few bounds on
wall time where a deadline must hold.
"""

from __future__ import annotations

import email.utils
import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest

from sie_index import Document, EncoderMismatch, Index, SieEncoder, TokenStatesEncoder
from sie_index.encoders.sie import parse_retry_after
from sie_index.encoders.sie_wire import decode_ndarray, encode_ndarray
from sie_index.errors import EncoderProtocolError, EncoderUnavailable, InvalidInput, NotAnIndex
from tests.sie_server import Fault, LoopbackSie

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = [
    "GNU image manipulation program",
    "a lightweight web server",
    "tools to manage ssh keys",
    "x",
    "Python linter and static checker for source code",
]
TEXTS_DOCS = [Document(id=f"d{i}", text=t) for i, t in enumerate(TEXTS)]


@pytest.fixture(scope="module")
def local() -> TokenStatesEncoder:
    return TokenStatesEncoder(bf16=False)  # fp32: SIE and local builds agree to rounding


@pytest.fixture
def server(local: TokenStatesEncoder) -> Iterator[LoopbackSie]:
    with LoopbackSie(local, model=MODEL) as srv:
        yield srv


class Sleeps(list[float]):
    """A sleep that records its argument instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def sie(server: LoopbackSie, **kw: object) -> SieEncoder:
    kw.setdefault("deadline", 30.0)  # generous: two busy cores make a loopback encode slow
    kw.setdefault("sleep", Sleeps())
    return SieEncoder(server.url, MODEL, **kw)  # type: ignore[arg-type]


# -- the wire format -------------------------------------------------------------------


@pytest.mark.parametrize("wire_format", ["msgpack", "json"])
def test_vectors_equal_the_local_encoder(
    server: LoopbackSie, local: TokenStatesEncoder, wire_format: str
) -> None:
    enc = sie(server, wire_format=wire_format, machine_profile="l4", pool="eval")
    assert enc.spec.dim == 384  # asked the server: not a catalog model
    docs = enc.encode_documents(TEXTS)
    queries = enc.encode_queries(TEXTS[:2])
    for got, want in zip(docs, local.encode_documents(TEXTS), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    for got, want in zip(queries, local.encode_queries(TEXTS[:2]), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    seen = server.stats.seen[-2:]
    assert [s.is_query for s in seen] == [False, True]
    assert all(s.content_type == f"application/{wire_format}" for s in seen)
    assert seen[0].headers["x-sie-machine-profile"] == "l4"
    assert seen[0].headers["x-sie-pool"] == "eval"
    assert seen[0].output_dtype == "float32"


def test_float16_is_accepted_and_quantized_dtypes_are_refused(server: LoopbackSie) -> None:
    out = sie(server, output_dtype="float16").encode_documents(TEXTS)
    assert all(v.dtype == np.float32 for v in out)
    np.testing.assert_allclose(np.linalg.norm(out[0], axis=1), 1.0, atol=1e-5)
    assert server.stats.seen[-1].output_dtype == "float16"
    for dtype in ("int8", "uint8", "binary", "ubinary"):
        with pytest.raises(InvalidInput, match="not supported yet"):
            SieEncoder(server.url, MODEL, output_dtype=dtype)


def test_batches_by_count_and_by_bytes(server: LoopbackSie) -> None:
    texts = [f"package number {i} does things" for i in range(10)]
    sie(server, dim=384, batch_size=3).encode_documents(texts)
    assert sorted(s.n_items for s in server.stats.seen) == [1, 3, 3, 3]
    server.stats.seen.clear()
    sie(server, dim=384, batch_size=32, max_batch_bytes=150).encode_documents(texts)
    sizes = [s.n_items for s in server.stats.seen]
    assert sum(sizes) == 10 and max(sizes) <= 2


def test_requests_in_flight_are_bounded_and_results_keep_their_order(
    server: LoopbackSie, local: TokenStatesEncoder
) -> None:
    texts = [f"{TEXTS[i % 5]} {i}" for i in range(24)]
    enc = sie(server, dim=384, batch_size=2, max_in_flight=3)
    got = enc.encode_documents(texts)
    assert enc.stats.requests == 12 and enc.stats.max_in_flight <= 3
    assert server.stats.max_in_flight <= 3
    for g, t in zip(got, texts, strict=True):
        np.testing.assert_allclose(g, local.encode_documents([t])[0], atol=1e-5)
    enc.close()


def test_a_413_splits_the_batch_and_goes_on(server: LoopbackSie) -> None:
    server.max_items = 3
    enc = sie(server, dim=384, batch_size=8)
    texts = [f"text {i}" for i in range(8)]
    got = enc.encode_documents(texts)
    assert len(got) == 8 and enc.stats.splits >= 2
    assert max(s.n_items for s in server.stats.seen) == 8  # the refused first try
    server.max_items = 0
    with pytest.raises(EncoderProtocolError, match="too large"):
        enc.encode_documents(["one"])


# -- retries -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault(status=503, code="MODEL_LOADING", retry_after="0"),
        Fault(status=503, code="MODEL_LOADING"),
        Fault(status=503, code="PROVISIONING", retry_after="2"),
        Fault(status=503, code="RESOURCE_EXHAUSTED"),
        Fault(status=429, code="RATE_LIMIT", retry_after="1"),
        Fault(status=504),
        Fault(close=True),
    ],
    ids=["loading", "loading-no-header", "provisioning", "exhausted", "429", "504", "dropped"],
)
def test_retryable_answers_are_retried(server: LoopbackSie, fault: Fault) -> None:
    if fault.close:  # a dropped connection is not a connect error: SIE does not retry it
        server.faults.append(fault)
        with pytest.raises(EncoderUnavailable, match="failed"):
            sie(server, dim=384).encode_documents(TEXTS)
        return
    server.faults.extend([fault, fault])
    sleeps = Sleeps()
    enc = sie(server, dim=384, sleep=sleeps)
    assert len(enc.encode_documents(TEXTS)) == len(TEXTS)
    assert server.stats.requests == 3 and enc.stats.retries == 2
    if fault.retry_after == "0":  # never a busy loop: the backoff is a floor
        assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2
    elif fault.retry_after is not None:
        assert sleeps == [float(fault.retry_after)] * 2


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (400, "BAD_REQUEST", EncoderProtocolError),
        (404, "MODEL_NOT_FOUND", EncoderUnavailable),
        (502, "MODEL_LOAD_FAILED", EncoderUnavailable),
        (503, "SOMETHING_ELSE", EncoderUnavailable),
        (500, "INTERNAL", EncoderUnavailable),
    ],
)
def test_terminal_answers_are_not_retried(
    server: LoopbackSie, status: int, code: str, error: type[Exception]
) -> None:
    server.faults.append(Fault(status=status, code=code, retry_after="0"))
    with pytest.raises(error, match=f"HTTP {status} {code}.*not retried"):
        sie(server, dim=384).encode_documents(TEXTS)
    assert server.stats.requests == 1


def test_an_unknown_model_is_a_404_not_retried(server: LoopbackSie) -> None:
    with pytest.raises(EncoderUnavailable, match="404 MODEL_NOT_FOUND"):
        SieEncoder(server.url, "no/such-model", dim=8).encode_queries(["q"])
    assert server.stats.requests == 1


def test_resource_exhausted_is_retried_a_bounded_number_of_times(server: LoopbackSie) -> None:
    server.faults.extend([Fault(status=503, code="RESOURCE_EXHAUSTED")] * 10)
    with pytest.raises(EncoderUnavailable, match="RESOURCE_EXHAUSTED"):
        sie(server, dim=384).encode_documents(TEXTS)
    assert server.stats.requests == 5


@pytest.mark.parametrize(
    "value", ["nan", "NaN", "inf", "-inf", "-1", "soon", "", "1e309", "9" * 30]
)
def test_bad_retry_after_values_never_reach_sleep(server: LoopbackSie, value: str) -> None:
    assert parse_retry_after(value) is None
    server.faults.append(Fault(status=429, code="RATE_LIMIT", retry_after=value))
    sleeps = Sleeps()
    sie(server, dim=384, sleep=sleeps).encode_documents(TEXTS)
    assert len(sleeps) == 1 and 0 < sleeps[0] <= 5 and np.isfinite(sleeps[0])


def test_retry_after_as_an_http_date(server: LoopbackSie) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=3)
    past = datetime.now(UTC) - timedelta(hours=1)
    server.faults.append(Fault(status=429, retry_after=email.utils.format_datetime(soon, True)))
    server.faults.append(
        Fault(status=503, code="MODEL_LOADING", retry_after=email.utils.format_datetime(past, True))
    )
    sleeps = Sleeps()
    sie(server, dim=384, sleep=sleeps).encode_documents(TEXTS)
    assert 1.0 < sleeps[0] <= 3.0 and 0.1 <= sleeps[1] <= 0.2  # a past date: the backoff
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after(" 7 ") == 7.0


def test_a_retry_after_past_the_deadline_fails_at_once(server: LoopbackSie) -> None:
    server.faults.append(Fault(status=503, code="MODEL_LOADING", retry_after="100"))
    sleeps = Sleeps()
    needle = (
        r"deadline of 1s exceeded after 1 attempt .*last: HTTP 503 MODEL_LOADING; next try in 100"
    )
    with pytest.raises(EncoderUnavailable, match=needle):
        sie(server, dim=384, deadline=1.0, sleep=sleeps).encode_documents(TEXTS)
    assert sleeps == []


def test_a_stall_past_the_deadline_fails_without_retry(server: LoopbackSie) -> None:
    server.faults.append(Fault(stall=3.0))
    enc = sie(server, dim=384, deadline=1.0)
    with pytest.raises(EncoderUnavailable, match=r"deadline of 1s exceeded after 1 attempt "):
        enc.encode_queries(["anything"])
    assert enc.stats.requests == 1


@pytest.mark.parametrize("headers", [False, True], ids=["body", "headers"])
def test_a_trickling_server_fails_within_the_deadline(server: LoopbackSie, headers: bool) -> None:
    enc = sie(server, dim=384, deadline=1.5)
    enc.encode_queries(["a first answer"])  # the trickle comes on a connection reused after it
    server.faults.append(Fault(trickle=0.2, trickle_headers=headers))
    started = time.monotonic()
    with pytest.raises(EncoderUnavailable, match=r"deadline of 1.5s exceeded after 1 attempt "):
        enc.encode_queries(["a slow answer"])
    assert time.monotonic() - started < 1.5 + 3  # a bound on correctness, not a timing
    assert server.stats.ports[0] == server.stats.ports[1]  # the same kept-alive connection
    assert enc.encode_queries(["the server is fine again"])  # the lane reconnects
    enc.close()


def test_retry_after_zero_is_no_busy_loop(server: LoopbackSie) -> None:
    server.always = Fault(status=503, code="MODEL_LOADING", retry_after="0")
    enc = sie(server, dim=384, deadline=2.0, sleep=time.sleep)
    started = time.monotonic()
    needle = r"deadline of 2s exceeded after \d+ attempts .*last: HTTP 503 MODEL_LOADING"
    with pytest.raises(EncoderUnavailable, match=needle):
        enc.encode_queries(["q"])
    assert time.monotonic() - started < 2 + 3
    assert 3 <= server.stats.requests < 40


def test_connect_errors_are_retried_until_the_deadline() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = Sleeps()
    enc = SieEncoder(f"http://127.0.0.1:{port}", MODEL, dim=384, deadline=0.5, sleep=sleeps)
    with pytest.raises(EncoderUnavailable, match=r"cannot connect|deadline"):
        enc.encode_queries(["q"])
    assert enc.stats.requests >= 2 and sleeps and all(s > 0 for s in sleeps)


# -- responses are checked in full ---------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("short", "4 results for 5 items"),
        ("long", "6 results for 5 items"),
        ("reorder", "out of order"),
        ("garbage", "cannot be parsed"),
        ("pickle", "never pickled"),
        ("void", "never pickled"),
        ("bytes", "needs .* bytes"),
        ("nan", "NaN"),
        ("dims", "token_dims=383"),
        ("narrow", "383-dim vectors, expected 384"),
    ],
)
@pytest.mark.parametrize("wire_format", ["msgpack", "json"])
def test_a_bad_batch_is_a_typed_error_naming_the_batch(
    server: LoopbackSie, damage: str, needle: str, wire_format: str
) -> None:
    if wire_format == "json" and damage in ("pickle", "void", "bytes", "nan"):
        pytest.skip("msgpack-numpy faults")
    server.faults.append(Fault(batch=damage))
    with pytest.raises(EncoderProtocolError, match=f"document batch 0 .*{needle}"):
        sie(server, dim=384, wire_format=wire_format).encode_documents(TEXTS)


def test_msgpack_numpy_is_decoded_without_pickle_and_checked() -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    packed = msgpack.unpackb(msgpack.packb(encode_ndarray(arr), use_bin_type=True), raw=False)
    np.testing.assert_array_equal(decode_ndarray(packed, where="t"), arr)
    for bad in (
        {**packed, b"type": "|O", b"kind": b"O"},
        {**packed, b"type": "|V4", b"kind": b"V"},
        {**packed, b"type": "<U2"},
        {**packed, b"shape": [3, 3]},
        {**packed, b"shape": [-2, -3]},
        {**packed, b"data": "text"},
        {b"nd": False},
    ):
        with pytest.raises(EncoderProtocolError):
            decode_ndarray(bad, where="t")


def test_an_injected_client_is_used() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert request.url.path == "/v1/encode/org/model" and body["params"]["options"]
        items = [
            {
                "id": it["id"],
                "multivector": {
                    "token_dims": 2,
                    "num_tokens": 1,
                    "dtype": "float32",
                    "values": [[3.0, 4.0]],
                },
            }
            for it in body["items"]
        ]
        return httpx.Response(200, json={"model": "org/model", "items": items})

    client = httpx.Client(transport=httpx.MockTransport(answer))
    enc = SieEncoder("http://sie", "org/model", dim=2, client=client, wire_format="json")
    np.testing.assert_allclose(enc.encode_queries(["a", "b"])[1], [[0.6, 0.8]])
    enc.close()
    assert not client.is_closed


# -- an index built through SIE -------------------------------------------------------------


def test_an_index_built_through_sie_matches_the_local_build(
    server: LoopbackSie, local: TokenStatesEncoder, tmp_path: Path
) -> None:
    kw = {"limit": 60, "on_error": "skip", "index_kind": "flat", "progress": False}
    enc = sie(server, max_in_flight=2)
    via_sie = Index.build(tmp_path / "sie", "debian-pkgs", encoder=enc, **kw)  # type: ignore[arg-type]
    alone = Index.build(tmp_path / "local", "debian-pkgs", encoder=local, **kw)  # type: ignore[arg-type]
    info = via_sie.info()["encoder"]
    assert info["kind"] == "sie" and info["model"] == MODEL and info["dim"] == 384
    assert info["runtime"]["url"] == server.url
    queries = ["ASCII art", "web server", "compress files", "python"]
    for a, b in zip(
        via_sie.search_batch(queries, k=5), alone.search_batch(queries, k=5), strict=True
    ):
        assert [h.external_id for h in a] == [h.external_id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-3)
    Q = local.encode_queries(["ASCII art"])[0]
    server.__exit__()  # no server from here on
    assert Index.open(tmp_path / "sie").search(Q, k=3)  # query vectors need no server
    reopened = Index.open(tmp_path / "sie", encoder=sie(server, dim=384, deadline=0.5))
    with pytest.raises(EncoderUnavailable, match=r"cannot connect|deadline"):
        reopened.search("ASCII art", k=3)


def test_an_sie_index_opens_with_any_server_of_its_model(
    server: LoopbackSie, local: TokenStatesEncoder, tmp_path: Path
) -> None:
    enc = sie(server)
    Index.build(tmp_path / "i", TEXTS_DOCS, encoder=enc, index_kind="flat", progress=False)
    with LoopbackSie(local, model=MODEL) as other:
        index = Index.open(tmp_path / "i", encoder=SieEncoder(other.url, MODEL))
        assert index.search("web server", k=1)[0].external_id == "d1"
        assert other.stats.requests >= 1
    with (
        LoopbackSie(local, model="other/model") as wrong,
        pytest.raises(EncoderMismatch, match="other/model"),
    ):
        Index.open(tmp_path / "i", encoder=SieEncoder(wrong.url, "other/model", dim=384))


def test_a_bad_batch_during_a_build_commits_nothing_and_a_resume_finishes(
    server: LoopbackSie, tmp_path: Path
) -> None:
    server.faults.extend([Fault(), Fault(batch="short")])
    options: dict[str, Any] = {
        "limit": 60,
        "on_error": "skip",
        "batch_size": 16,
        "progress": False,
    }
    with pytest.raises(EncoderProtocolError, match="results for"):
        Index.build(tmp_path / "idx", "debian-pkgs", encoder=sie(server, dim=384), **options)
    # no index: the folder holds the batch stored before the bad one, for a resume
    with pytest.raises(NotAnIndex, match="interrupted build"):
        Index.open(tmp_path / "idx")
    index = Index.build(
        tmp_path / "idx", "debian-pkgs", encoder=sie(server, dim=384), resume=True, **options
    )
    assert index.build_report is not None and index.build_report.resumed_documents == 16
    assert len(index) == 60


# -- the command line --------------------------------------------------------------------------


def test_cli_build_search_and_evaluate_through_sie(
    server: LoopbackSie,
    local: TokenStatesEncoder,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sie_index.cli import main

    out = tmp_path / "idx"
    sie_args = ["--encoder", "sie", "--sie-url", server.url, "--model", MODEL]
    build = ["-q", "build", "debian-pkgs", str(out), "--limit", "60", "--skip-bad-lines"]
    assert main([*build, *sie_args]) == 0
    assert "60 documents" in capsys.readouterr().out
    with LoopbackSie(local, model=MODEL) as other:  # the URL in the manifest is only a default
        query = ["search", str(out), "ASCII art", "-k", "2", "--json", "--sie-url", other.url]
        assert main([*query, "--sie-format", "json"]) == 0
        hits = json.loads(capsys.readouterr().out)[0]["hits"]
        assert len(hits) == 2 and other.stats.requests == 1
        assert other.stats.seen[0].content_type == "application/json"
        report = tmp_path / "eval"
        args = ["evaluate", "debian-pkgs", "--index", str(out), "--out", str(report)]
        assert main([*args, "--sie-url", other.url]) == 0
        assert json.loads((report / "report.json").read_text())["queries"] > 0
    before = server.stats.requests
    assert main(["search", str(out), "ASCII art", "--encoder", "sie"]) == 0  # the manifest's URL
    assert server.stats.requests == before + 1
    capsys.readouterr()
    assert (
        main(
            [
                "search",
                str(out),
                "x",
                "--encoder",
                "sie",
                "--model",
                "other/model",
                "--sie-url",
                server.url,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "404 MODEL_NOT_FOUND" in err and "model_not_found" in err  # the server's own words


# -- the build pipeline and imports ---------------------------------------------------------------


def test_encode_ahead_keeps_order_and_raises_in_the_consumer() -> None:
    from sie_index.writer import EncodeAhead

    def encode(batch: list[Document]) -> list[np.ndarray]:
        if batch[0].id == "bad":
            raise EncoderProtocolError("batch 3 is short")
        return [np.ones((1, 2), np.float32)] * len(batch)

    batches = [[Document(id=f"{i}", text="t")] for i in range(3)] + [[Document(id="bad", text="t")]]
    with EncodeAhead(iter(batches), encode) as ahead:
        seen = []
        with pytest.raises(EncoderProtocolError, match="batch 3"):
            for docs, vectors, seconds in ahead:
                seen.append(docs[0].id)
                assert len(vectors) == 1 and seconds >= 0
    assert seen == ["0", "1", "2"]
    endless = ([Document(id="x", text="t")] for _ in iter(int, 1))
    with EncodeAhead(endless, encode) as ahead:  # leaving early stops the thread
        next(iter(ahead))
    assert not ahead._thread.is_alive()


def test_importing_the_encoders_package_loads_neither_torch_nor_httpx() -> None:
    import subprocess
    import sys

    code = "import sie_index.encoders, sys; print('torch' in sys.modules, 'httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_encoders_import_nothing_from_storage() -> None:
    import ast

    import sie_index.encoders

    for path in Path(sie_index.encoders.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "storage" for n in names), path.name


def test_the_encoder_an_index_folder_needs(
    server: LoopbackSie, local: TokenStatesEncoder, tmp_path: Path
) -> None:
    from sie_index.index_encoder import encoder_for_index

    kw = {"index_kind": "flat", "progress": False}
    Index.build(tmp_path / "sie", TEXTS_DOCS, encoder=sie(server), **kw)  # type: ignore[arg-type]
    Index.build(tmp_path / "local", TEXTS_DOCS, encoder=local, **kw)  # type: ignore[arg-type]
    options = {"deadline": 7.0, "batch_size": 3, "max_in_flight": 2}
    own = encoder_for_index(tmp_path / "sie", sie_format="json", sie_options=options)
    assert isinstance(own, SieEncoder) and own.url == server.url and own.model == MODEL
    assert (own.deadline, own.batch_size, own.max_in_flight) == (7.0, 3, 2)
    assert own.wire_format == "json"
    other = encoder_for_index(tmp_path / "sie", "sie", sie_url="http://elsewhere:1", model="o/m")
    assert isinstance(other, SieEncoder) and (other.url, other.model) == (
        "http://elsewhere:1",
        "o/m",
    )
    assert encoder_for_index(tmp_path / "local", sie_options=options) is None  # makes its own
    with pytest.raises(InvalidInput, match="not through SIE"):
        encoder_for_index(tmp_path / "local", sie_url=server.url)
