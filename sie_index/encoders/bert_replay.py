"""One text's forward pass through a BERT model, replayed without the library's per-call work.

Why: a query is one text of about a dozen word pieces, and in the transformers
forward of all-MiniLM-L6-v2 a third of its time is spent around the products, not in
them: a hundred module calls, keyword plumbing, building an attention mask that masks
nothing, and a pooler whose output nobody reads. This replays the same operators on
the same weights in the same order (embeddings, then per layer the three
projections, scaled dot-product attention, the output projection, layer norm, the
feed-forward with GELU, layer norm) and calls each linear layer's own ``forward``,
packed or plain. On 200 dev queries, one thread, bfloat16 packed layers: 4.0 ms a
query where ``model(...)`` took 6.0 ms, the hidden states equal bit for bit.

Only a text with every position attended and token type 0 (what a lone query is)
takes this path, and only a model that matched ``model(...)`` bit for bit on a probe
text at load, run in the encoder's own context (threads, inference mode,
autocast); any other model or input runs ``model(...)`` as before, so a model this
does not know loses the speed, never its results. Imported only when a local
encoder loads (it imports torch).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["BertReplay", "bert_replay"]

_PROBE_LENGTH = 12
"""Word pieces in the probe text: a query's usual length (debian-pkgs' dev queries
average 12 with [CLS] and [SEP])."""


class BertReplay:
    """Calls ``(ids) -> hidden``: one text's token ids, a ``(1, length)`` long tensor,
    to its last hidden states, ``(1, length, hidden)`` as ``last_hidden_state`` is.

    Made by :func:`bert_replay`, which checks it against the model first; one made
    directly is unchecked. It holds the model's weights and its linear layers' bound
    ``forward`` methods as they are when it is made: an encoder makes it after moving
    the model to its device and packing its layers, and changes neither afterwards.
    It keeps no state between calls, so threads may share it."""

    def __init__(self, model: Any) -> None:
        config = model.config
        self.heads = int(config.num_attention_heads)
        self.max_length = int(config.max_position_embeddings)
        emb = model.embeddings
        self.word = emb.word_embeddings.weight
        self.type0 = emb.token_type_embeddings.weight[0]
        self.positions = emb.position_embeddings.weight
        self.norm0 = _norm(emb.LayerNorm)
        self.layers = [
            (
                layer.attention.self.query.forward,
                layer.attention.self.key.forward,
                layer.attention.self.value.forward,
                float(layer.attention.self.scaling),
                layer.attention.output.dense.forward,
                _norm(layer.attention.output.LayerNorm),
                layer.intermediate.dense.forward,
                layer.output.dense.forward,
                _norm(layer.output.LayerNorm),
            )
            for layer in model.encoder.layer
        ]

    def takes(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor | None = None,
        types: torch.Tensor | None = None,
    ) -> bool:
        """Whether these inputs' hidden states are the replay's: one text, of a length
        the position table holds (``model(...)`` refuses a longer one in its own
        words), every position attended (``mask``), token type 0 (``types``)."""
        return (
            ids.dim() == 2
            and int(ids.shape[0]) == 1
            and 0 < int(ids.shape[1]) <= self.max_length
            and (mask is None or bool(mask.all()))
            and (types is None or not bool(types.any()))
        )

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids[0]
        length = int(ids.shape[0])
        x = F.embedding(ids, self.word) + self.type0
        x = F.layer_norm(x + self.positions[:length], *self.norm0)
        shape = (length, self.heads, -1)
        for query, key, value, scale, dense, norm1, up, down, norm2 in self.layers:
            q = query(x).view(shape).transpose(0, 1)[None]
            k = key(x).view(shape).transpose(0, 1)[None]
            v = value(x).view(shape).transpose(0, 1)[None]
            attended = F.scaled_dot_product_attention(q, k, v, scale=scale)[0]
            h = F.layer_norm(dense(attended.transpose(0, 1).reshape(length, -1)) + x, *norm1)
            x = F.layer_norm(down(F.gelu(up(h))) + h, *norm2)
        return x[None]


def bert_replay(
    model: Any, context: Callable[[], AbstractContextManager[Any]]
) -> BertReplay | None:
    """The replay of ``model`` where it is a BERT encoder this module replays and its
    replay equals ``model(...)`` bit for bit on a probe text run inside ``context()``
    (the context the encoder runs a one-text forward pass in); else None.

    The probe runs one length; what the replay does not do at any length is refused
    before it: another activation or attention, a decoder, relative positions, and a
    feed-forward chunked along the text (where a length that is not a multiple of the
    chunk makes ``model(...)`` raise)."""
    try:
        config = model.config
        if (
            config.model_type != "bert"
            or model.training
            or config.is_decoder
            or getattr(config, "add_cross_attention", False)
            or config._attn_implementation != "sdpa"
            or config.hidden_act != "gelu"
            or getattr(config, "position_embedding_type", "absolute") != "absolute"
            or getattr(config, "chunk_size_feed_forward", 0) != 0
        ):
            return None
        replay = BertReplay(model)
        length = min(_PROBE_LENGTH, replay.max_length)
        # spread over the vocabulary (a prime step), none of the ids repeated
        probe = (torch.arange(length, dtype=torch.long) * 7919 + 101) % int(config.vocab_size)
        probe = probe.to(replay.word.device)[None]
        with context():
            expected = model(
                input_ids=probe, attention_mask=torch.ones_like(probe)
            ).last_hidden_state
            got = replay(probe)
    except (AttributeError, TypeError, ValueError, IndexError, RuntimeError):
        return None  # not the BERT this replays, or an operator it cannot run
    same = got.dtype == expected.dtype and torch.equal(got, expected)
    return replay if same else None


def _norm(layer: Any) -> tuple[Any, ...]:
    """``F.layer_norm``'s arguments after the input, as ``layer`` calls it."""
    return (tuple(layer.normalized_shape), layer.weight, layer.bias, float(layer.eps))
