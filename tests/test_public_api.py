"""The public face: a small, sorted, complete ``__all__``; no pickle anywhere."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import sie_index

ROOT = Path(__file__).resolve().parents[1]


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert sie_index.__all__ == sorted(sie_index.__all__)
    for name in sie_index.__all__:
        assert getattr(sie_index, name) is not None, name


def test_errors_form_one_tree() -> None:
    for name in sie_index.__all__:
        obj = getattr(sie_index, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, sie_index.SieIndexError)
    assert issubclass(sie_index.InvalidInput, ValueError)


def test_importing_the_package_or_storage_first_is_cheap_and_acyclic() -> None:
    for stmt in (
        "import storage.snapshot",
        "import sie_index; sie_index.Index",
        "import sie_index",
    ):
        code = f"{stmt}; import sys; print('torch' in sys.modules)"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout.strip()
        if stmt == "import sie_index":
            assert out == "False"


def test_no_pickle_in_the_code() -> None:
    pattern = re.compile(r"import pickle|pickle\.loads?\(|allow_pickle\s*=\s*True|torch\.load\(")
    for folder in ("sie_index", "storage", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not pattern.search(path.read_text()), path


def test_storage_stands_alone() -> None:
    """The on-disk layer imports nothing of sie_index, nor torch (a writer process
    would pay seconds of import for its first add), and changes no process state."""
    upward = re.compile(r"^\s*(from|import)\s+(sie_index|torch)\b", re.MULTILINE)
    for path in (ROOT / "storage").rglob("*.py"):
        assert not upward.search(path.read_text()), path
    code = (
        "import os, sys; before = dict(os.environ); "
        "import storage.builder, storage.snapshot, storage.errors; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sie_index'), "
        "dict(os.environ) == before)"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env
    ).stdout.strip()
    assert out == "[] True"


def test_storage_has_one_small_sorted_front_door() -> None:
    """``storage.__all__`` is sorted, every name resolves, and ``sie_index`` imports
    storage only through it (no ``from storage.snapshot import ...`` above)."""
    import storage

    # sorted as ruff keeps it: constants first
    assert storage.__all__ == sorted(storage.__all__, key=lambda n: (not n.isupper(), n))
    for name in storage.__all__:
        assert getattr(storage, name) is not None, name
    back_door = re.compile(r"^\s*(from|import)\s+storage\.\w+", re.MULTILINE)
    for path in (ROOT / "sie_index").rglob("*.py"):
        assert not back_door.search(path.read_text()), path


def _public_types(hint: object) -> set[type]:
    """The classes a type hint names, unions and generics opened."""
    args = typing.get_args(hint)
    if args:
        return set().union(*(_public_types(a) for a in args))
    return {hint} if isinstance(hint, type) else set()


def test_all_holds_every_type_the_public_api_returns() -> None:
    """Every class of sie-index or storage that a public function, method or property
    of a name in ``__all__`` returns is itself in ``__all__`` (IndexWriter, reports...)."""
    missing = set()
    for name in sie_index.__all__:
        obj = getattr(sie_index, name)
        members = (
            [obj]
            if not isinstance(obj, type)
            else [getattr(obj, m) for m in dir(obj) if not m.startswith("_")]
        )
        for member in members:
            func = member.fget if isinstance(member, property) else member
            if not callable(func):
                continue
            try:
                hints = typing.get_type_hints(func)
            except Exception:
                continue
            for cls in _public_types(hints.get("return")):
                ours = cls.__module__.split(".")[0] in ("sie_index", "storage")
                if ours and cls.__name__ not in sie_index.__all__:
                    missing.add(f"{cls.__name__} (returned by {name}.{func.__name__})")
    assert not missing, sorted(missing)


def _hit(**fields: typing.Any) -> sie_index.Hit:
    return sie_index.Hit(doc_id=3, external_id="vim", score=12.5, **fields)


def test_a_hit_has_an_id_and_a_json_ready_dict() -> None:
    import json

    from sie_index.params import MatchedToken

    bare = _hit()
    assert bare.id == "vim" == bare.external_id
    assert bare.to_dict() == {"id": "vim", "doc_id": 3, "score": 12.5}  # no None fields
    full = _hit(
        text="Vi IMproved",
        metadata={"section": "editors"},
        explain=(MatchedToken(query_token=0, doc_token=2, similarity=0.5, doc_text="vi"),),
        shard=1,
    )
    d = full.to_dict()
    assert (d["shard"], d["text"], d["metadata"]) == (1, "Vi IMproved", {"section": "editors"})
    assert d["explain"] == [
        {"query_token": 0, "doc_token": 2, "similarity": 0.5, "query_text": None, "doc_text": "vi"}
    ]
    assert json.loads(json.dumps(d)) == d
    assert _hit(text="").to_dict()["text"] == ""  # an empty text is not a missing one


def test_the_server_wire_and_the_cli_print_hit_to_dict() -> None:
    from sie_index.cli.search import _hit_dict as _hit_json
    from sie_index.params import MatchedToken

    wire = pytest.importorskip("sie_index.server.wire")
    explain = (MatchedToken(query_token=1, doc_token=0, similarity=0.25),)
    for hit in (_hit(), _hit(text="t", metadata={"a": 1}, explain=explain, shard=2)):
        out = wire.HitOut.of(hit)
        assert out.model_dump(exclude_none=True) == {
            k: [{n: v for n, v in m.items() if v is not None} for m in val]
            if k == "explain"
            else val
            for k, val in hit.to_dict().items()
        }
        assert out.hit() == hit  # the client reads back what the server sent
        printed = _hit_json(4, hit)
        assert printed == {"rank": 4, "text": None, "metadata": None, **hit.to_dict()}
