"""Linear layers whose bfloat16 weights are laid out for oneDNN once, at load.

Why: a bfloat16 product on the CPU goes through oneDNN, which wants the weight in
its own blocked layout and, from a plain tensor, reorders it on every call. For one
query (about 12 tokens) that reorder is most of the product: the 37 linear layers
of all-MiniLM-L6-v2 took 4.4 ms of a 5.6 ms forward pass. Reordered once here
(``torch.ops.mkldnn._reorder_linear_weight``, what torch's own compiler uses when it
freezes a model for the CPU) and multiplied by ``torch.ops.mkldnn._linear_pointwise``,
a query's forward pass took 5.0 ms in place of 6.7 ms (150 dev queries, one thread)
and a batch of documents was no slower; the hidden states were equal bit for bit.

These are torch's internal operators. Each layer is packed only after its packed
product agreed with the plain one on a probe input; where an operator is missing
or disagrees, the layer stays as it was, so a torch without them loses the speed,
never the results. Imported only when a local encoder loads (it imports torch).
"""

from __future__ import annotations

import torch

__all__ = ["ROWS_HINT", "pack_linear_layers"]

ROWS_HINT = 16
"""The batch rows oneDNN picks the weight layout for (a query's tokens); any count runs."""


def pack_linear_layers(model: torch.nn.Module) -> int:
    """Replace ``model``'s bfloat16 ``nn.Linear`` layers by packed ones, in place, each
    checked first; returns how many were packed."""
    ops = getattr(torch.ops, "mkldnn", None)
    if ops is None or not hasattr(ops, "_reorder_linear_weight"):
        return 0
    packed = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and child.weight.dtype == torch.bfloat16:
                layer = _packed(child)
                if layer is not None:
                    setattr(parent, name, layer)
                    packed += 1
    return packed


def _packed(linear: torch.nn.Linear) -> _PackedLinear | None:
    weight = linear.weight.detach()
    bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
    try:
        layer = _PackedLinear(
            torch.ops.mkldnn._reorder_linear_weight(weight, ROWS_HINT), bias, weight.shape
        )
        probe = torch.randn(3, weight.shape[1], generator=torch.Generator().manual_seed(0))
        probe = probe.to(torch.bfloat16)
        with torch.inference_mode():
            agrees = torch.allclose(
                layer(probe).float(),
                torch.nn.functional.linear(probe, weight, bias).float(),
                rtol=1e-2,
                atol=1e-2,
            )
    except (RuntimeError, TypeError, AttributeError):
        return None
    return layer if agrees else None


class _PackedLinear(torch.nn.Module):
    """``y = x Wᵀ + b`` in bfloat16, ``W`` in oneDNN's layout; as autocast runs a
    linear layer: the input cast to bfloat16, the output bfloat16."""

    def __init__(self, packed: torch.Tensor, bias: torch.Tensor | None, shape: torch.Size) -> None:
        super().__init__()
        # plain attributes, not parameters or buffers: an opaque oneDNN tensor has no
        # state_dict form, and the encoder never moves its model after loading
        self.out_features, self.in_features = int(shape[0]), int(shape[1])
        self.packed = packed
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.to(torch.bfloat16).reshape(-1, self.in_features)
        y = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return y.reshape(*lead, self.out_features)
