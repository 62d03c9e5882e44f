"""Local ColBERT checkpoints (torch + transformers), in either layout, as PyLate encodes them.

:class:`ColbertEncoder` reads everything from the checkpoint folder:

- **Stanford** (colbert-ir/colbertv2.0): a BERT whose ``model.safetensors`` also
  holds a top-level ``linear.weight`` (hidden -> dim, no bias), and
  ``artifact.metadata`` (``query_token_id`` / ``doc_token_id`` markers, default
  ``[unused0]`` / ``[unused1]``; ``query_maxlen``, ``doc_maxlen``,
  ``attend_to_mask_tokens``);
- **PyLate / sentence-transformers**: ``modules.json`` (a Transformer, then Dense
  modules), ``config_sentence_transformers.json`` (``query_prefix``,
  ``document_prefix``, ``query_length``, ``document_length``,
  ``do_query_expansion``, ``attend_to_expansion_tokens``, ``skiplist_words``).

Encoding follows PyLate's ``ColBERT.encode``: the text is tokenized to
``length - 1`` tokens, the marker id is inserted after [CLS]; queries are padded
with [MASK] to the query length (expansion tokens kept, attended only if the
checkpoint says so); documents keep every real token but those of the skiplist
(removed after the forward pass); rows are L2-normalized. Weights are read from
safetensors only. Runs in float32 unless ``bf16=True``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import string
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sie_index.encoders.base import EncoderSpec, check_encoder_output
from sie_index.encoders.hf_cache import CHECKPOINT_FILES, checkpoint_folder
from sie_index.encoders.threads import forward_context
from sie_index.encoders.token_states import safetensors_weights, weights_fingerprint
from sie_index.errors import EncoderUnavailable, InvalidInput

__all__ = ["ColbertEncoder", "ColbertSettings"]

_IDENTITY = ("torch.nn.modules.linear.Identity", "torch.nn.Identity")


@dataclass(frozen=True, kw_only=True)
class ColbertSettings:
    """What a checkpoint says about markers, lengths, expansion and the skiplist."""

    layout: str
    query_prefix: str
    document_prefix: str
    query_length: int
    document_length: int
    do_query_expansion: bool
    attend_to_expansion_tokens: bool
    skiplist_words: tuple[str, ...]
    do_lower_case: bool = False


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EncoderUnavailable(f"cannot read {path}: {exc}") from exc


def _pick(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _settings(raw: Mapping[str, Any], layout: str, prefixes: tuple[str, str]) -> ColbertSettings:
    """PyLate's defaults where the checkpoint is silent."""
    expansion = bool(_pick(raw.get("do_query_expansion"), True))
    return ColbertSettings(
        layout=layout,
        query_prefix=str(_pick(raw.get("query_prefix"), prefixes[0])),
        document_prefix=str(_pick(raw.get("document_prefix"), prefixes[1])),
        query_length=int(_pick(raw.get("query_length"), 32)),
        document_length=int(_pick(raw.get("document_length"), 180)),
        do_query_expansion=expansion,
        attend_to_expansion_tokens=expansion
        and bool(_pick(raw.get("attend_to_expansion_tokens"), False)),
        skiplist_words=tuple(_pick(raw.get("skiplist_words"), list(string.punctuation))),
        do_lower_case=bool(raw.get("do_lower_case", False)),
    )


def _dense_layers(folder: Path, modules: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The Dense modules after the Transformer: weights (safetensors) and residual flag."""
    from safetensors.torch import load_file

    layers = []
    for module in modules[1:]:
        kind = str(module.get("type", ""))
        if not kind.endswith("Dense"):
            raise EncoderUnavailable(f"{folder}: module {kind!r} is not supported (only Dense)")
        sub = folder / str(module.get("path", ""))
        config = _read_json(sub / "config.json")
        if config.get("activation_function", _IDENTITY[0]) not in _IDENTITY:
            raise EncoderUnavailable(
                f"{sub}: activation {config['activation_function']!r} is not supported"
            )
        weights = load_file(str(safetensors_weights(sub)))
        layers.append(
            {
                "weight": weights["linear.weight"].float(),
                "bias": weights["linear.bias"].float() if config.get("bias", True) else None,
                "residual": weights.get("residual.weight") if config.get("use_residual") else None,
                "use_residual": bool(config.get("use_residual", False)),
            }
        )
    return layers


class ColbertEncoder:
    """Token vectors of a local ColBERT checkpoint folder (Stanford or PyLate layout).

    ``path`` is the folder, or a Hugging Face model id (``colbert-ir/colbertv2.0``)
    already in the local Hugging Face cache (see :mod:`sie_index.encoders.hf_cache`;
    nothing is downloaded); the id is then the spec's model name.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        model_name: str | None = None,
        batch_size: int = 32,
        device: str = "cpu",
        bf16: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        folder, hub_id = checkpoint_folder(path)
        model_name = model_name or hub_id  # a cached snapshot's folder name is a hash
        if (folder / "modules.json").is_file():
            modules = _read_json(folder / "modules.json")
            if not modules or not str(modules[0].get("type", "")).endswith("Transformer"):
                raise EncoderUnavailable(f"{folder}/modules.json does not start with a Transformer")
            base = folder / str(modules[0].get("path", ""))
            raw = {}
            if (folder / "config_sentence_transformers.json").is_file():
                raw = dict(_read_json(folder / "config_sentence_transformers.json"))
            if (base / "sentence_bert_config.json").is_file():
                raw["do_lower_case"] = _read_json(base / "sentence_bert_config.json").get(
                    "do_lower_case", False
                )
            settings = _settings(raw, "pylate", ("[Q] ", "[D] "))
            dense = _dense_layers(folder, modules)
        elif (folder / "config.json").is_file():
            from safetensors import safe_open

            base = folder
            meta = {}
            if (folder / "artifact.metadata").is_file():
                meta = _read_json(folder / "artifact.metadata")
            raw = {
                "query_prefix": meta.get("query_token_id"),
                "document_prefix": meta.get("doc_token_id"),
                "query_length": meta.get("query_maxlen"),
                "document_length": meta.get("doc_maxlen"),
                "attend_to_expansion_tokens": meta.get("attend_to_mask_tokens"),
            }
            settings = _settings(raw, "stanford", ("[unused0]", "[unused1]"))
            weights = safetensors_weights(folder)
            with safe_open(str(weights), framework="pt") as fh:
                if "linear.weight" not in fh.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    raise EncoderUnavailable(
                        f"{folder} has neither modules.json (PyLate) nor a top-level "
                        "linear.weight (Stanford ColBERT): not a ColBERT checkpoint"
                    )
                linear = fh.get_tensor("linear.weight").float()
            dense = [{"weight": linear, "bias": None, "residual": None, "use_residual": False}]
        else:
            raise EncoderUnavailable(
                f"{folder} is not a ColBERT checkpoint folder: one holds {CHECKPOINT_FILES}"
            )
        fingerprint = weights_fingerprint(base)  # refuses pickled weights before loading
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # Stanford's linear.weight is "unexpected" to BERT
            try:
                model = AutoModel.from_pretrained(
                    str(base), local_files_only=True, use_safetensors=True
                )
            finally:
                hf_logging.set_verbosity(verbosity)
        except (OSError, ValueError) as exc:
            raise EncoderUnavailable(f"cannot load the model in {base}: {exc}") from exc
        self._torch = torch
        self._threads = torch.get_num_threads()  # what a forward pass of a batch uses
        self.settings = settings
        self.tokenizer = tokenizer
        self.model = model.eval().to(device)
        self.device = device
        self.batch_size = batch_size
        self.bf16 = bf16
        self._dense = [
            {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in layer.items()}
            for layer in dense
        ]
        self._forward_args = set(inspect.signature(model.forward).parameters)
        from sie_index.encoders.bert_replay import bert_replay

        # a lone text skips transformers' per-call work where that is exact; made
        # after the model is moved to its device (it holds the weights as they are)
        self.replay = bert_replay(self.model, lambda: self._context(1))
        self.query_marker = self._marker_id(settings.query_prefix)
        self.document_marker = self._marker_id(settings.document_prefix)
        # PyLate pads with [MASK] (query expansion), else EOS, else the pad token.
        self.pad_id = next(
            i
            for i in (tokenizer.mask_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, 0)
            if i is not None
        )
        tokenizer.pad_token_id = self.pad_id
        # Like PyLate: convert_tokens_to_ids, so a word outside the vocabulary maps to [UNK].
        skip: Any = tokenizer.convert_tokens_to_ids(list(settings.skiplist_words))
        self.skiplist_ids = sorted({int(i) for i in skip})
        dim = int(self._dense[-1]["weight"].shape[0])
        self._spec = EncoderSpec(
            kind="colbert",
            model=model_name or folder.resolve().name,
            dim=dim,
            options={
                "layout": settings.layout,
                "query_prefix": settings.query_prefix,
                "document_prefix": settings.document_prefix,
                "query_length": settings.query_length,
                "document_length": settings.document_length,
                "do_query_expansion": settings.do_query_expansion,
                "attend_to_expansion_tokens": settings.attend_to_expansion_tokens,
                "skiplist_sha256": hashlib.sha256(
                    "\n".join(settings.skiplist_words).encode()
                ).hexdigest()[:16],
                "weights_sha256": fingerprint,
            },
            runtime={"path": str(folder.resolve()), "bf16": bf16, "device": device},
        )

    def _marker_id(self, prefix: str) -> int | None:
        if prefix == "":
            return None
        vocab = self.tokenizer.get_vocab()
        size = self.model.get_input_embeddings().weight.shape[0]
        if prefix not in vocab or vocab[prefix] >= size:
            raise EncoderUnavailable(
                f"the marker {prefix!r} has no embedding in this checkpoint (PyLate would add it "
                "with random weights); save the checkpoint with its markers"
            )
        return int(vocab[prefix])

    @property
    def spec(self) -> EncoderSpec:
        return self._spec

    def encode_documents(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self._encode(texts, is_query=False)

    def encode_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self._encode(texts, is_query=True)

    def token_ids(self, texts: Sequence[str], *, is_query: bool) -> list[list[int]]:
        """The token ids behind each returned vector row (markers, [MASK]s included),
        from the tokenizer alone: the rows :meth:`_kept` picks, as encoding does."""
        stripped = self._stripped(texts)
        if not stripped:
            return []
        features = self._tokenize(stripped, is_query)
        keep = self._kept(features, is_query)
        return [row[mask].tolist() for row, mask in zip(features["input_ids"], keep, strict=True)]

    def token_texts(self, texts: Sequence[str], *, is_query: bool) -> list[list[str]]:
        """The token behind each vector row that encoding ``texts`` returns (markers and
        [MASK] expansion included), without running the model."""
        return [
            list(self.tokenizer.convert_ids_to_tokens(ids))
            for ids in self.token_ids(texts, is_query=is_query)
        ]

    @staticmethod
    def _stripped(texts: Sequence[str]) -> list[str]:
        """The texts stripped, as sentence-transformers does; empty ones refused."""
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InvalidInput(f"text {i} is empty or not a string; nothing to encode")
        return [t.strip() for t in texts]

    def _tokenize(self, texts: list[str], is_query: bool) -> dict[str, Any]:
        s = self.settings
        marker = self.query_marker if is_query else self.document_marker
        length = s.query_length if is_query else s.document_length
        if s.do_lower_case:
            texts = [t.lower() for t in texts]
        tok = self.tokenizer
        expand = is_query and s.do_query_expansion
        features: dict[str, Any] = tok(
            texts,
            padding="max_length" if expand else True,
            truncation="longest_first",
            max_length=length - 1 if marker is not None else length,
            return_tensors="pt",
        )
        torch = self._torch
        if marker is not None:
            for key, value in (("input_ids", marker), ("attention_mask", 1), ("token_type_ids", 0)):
                if key in features:
                    t = features[key]
                    fill = torch.full((t.shape[0], 1), value, dtype=t.dtype)
                    features[key] = torch.cat([t[:, :1], fill, t[:, 1:]], dim=1)
        if is_query and s.attend_to_expansion_tokens:
            features["attention_mask"].fill_(1)
        return features

    def _encode(self, texts: Sequence[str], *, is_query: bool) -> list[np.ndarray]:
        stripped = self._stripped(texts)
        order = sorted(range(len(stripped)), key=lambda i: len(stripped[i]))
        vectors: list[np.ndarray | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            features = self._tokenize([stripped[i] for i in batch], is_query)
            emb = self._forward(features)
            keep = self._kept(features, is_query)
            for row, i in enumerate(batch):
                rows = emb[row][keep[row]]
                rows = self._torch.nn.functional.normalize(rows, p=2, dim=1)
                vectors[i] = rows.numpy()
        who = f"colbert encoder {self._spec.model}"
        return check_encoder_output(vectors, len(texts), self._spec.dim, who=who)

    def _kept(self, features: Mapping[str, Any], is_query: bool) -> Any:
        """Which token positions become vector rows: every one of an expanded query,
        else the attended ones, less the skiplist in documents."""
        input_ids = features["input_ids"]
        if is_query:
            if self.settings.do_query_expansion:
                return self._torch.ones_like(input_ids, dtype=self._torch.bool)
            return features["attention_mask"].bool()
        skip = self._torch.isin(input_ids, self._torch.tensor(self.skiplist_ids))
        return features["attention_mask"].bool() & ~skip

    def _context(self, rows: int) -> AbstractContextManager[None]:
        return forward_context(self._torch, rows, self.device, self._threads, self.bf16)

    def _forward(self, features: Mapping[str, Any]) -> Any:
        torch = self._torch
        inputs = {k: v.to(self.device) for k, v in features.items() if k in self._forward_args}
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        with self._context(len(ids)):
            # a query padded with masked expansion tokens is not the replay's
            if self.replay is not None and self.replay.takes(
                ids, mask, inputs.get("token_type_ids")
            ):
                hidden = self.replay(ids)
            else:
                hidden = self.model(**inputs).last_hidden_state
            for layer in self._dense:
                bias = layer["bias"]
                out = torch.nn.functional.linear(
                    hidden,
                    layer["weight"].to(hidden.dtype),
                    None if bias is None else bias.to(hidden.dtype),
                )
                if layer["use_residual"]:
                    res = layer["residual"]
                    out = out + (hidden if res is None else hidden @ res.to(hidden.dtype).T)
                hidden = out
        return hidden.float().cpu()
