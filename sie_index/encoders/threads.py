"""How a local encoder's forward pass runs: on how many threads, under inference mode
and bfloat16 autocast.

One text (a query, as a search encodes it) runs on one thread. Measured on the
full debian-pkgs index, 2 cores, 400 dev queries each encoded and then searched
(k=10), blocks of 25 interleaved: encoding took 8.8 ms p50 on one thread against
11.1 ms on two, text -> hits 14.2 against 16.5 ms. A forward over a dozen tokens is
a hundred small parallel regions; between them, with OpenMP waiting passively (see
``sie_index/__init__.py``), each region wakes the other thread, and after a search
the weights are out of the cache anyway. Batches (documents, many queries) keep
every thread. The vectors are the same either way (checked bit for bit in
tests/test_encoders.py): the products split their rows among threads, not their sums.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["forward_context", "forward_threads"]


@contextmanager
def forward_context(torch: Any, rows: int, device: str, threads: int, bf16: bool) -> Iterator[None]:
    """The context of a forward pass of ``rows`` texts: its threads (``forward_threads``),
    inference mode, and bfloat16 autocast where ``bf16``. One helper, so that both local
    encoders, and the replay's check at load (``bert_replay``), run the same one."""
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    with (
        forward_threads(torch, rows, device, threads),
        torch.inference_mode(),
        torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16),
    ):
        yield


@contextmanager
def forward_threads(torch: Any, rows: int, device: str, threads: int) -> Iterator[None]:
    """Run the block on one thread when the forward pass is of one text on the CPU;
    ``threads`` is the count the encoder was made with (torch's setting then).

    torch's setting is not the calling thread's alone: while the block runs, torch
    work of other threads may run on one thread too, which changes its speed, not
    its results (the products split rows, not sums), and a thread whose first torch
    work falls inside the block may keep one thread. So the block always puts back
    ``threads``, whatever it found, and a forward pass of a batch first lifts a
    count below ``threads`` back to it: no thread is left on one thread."""
    if device != "cpu" or threads <= 1:
        yield
        return
    if rows != 1:
        if torch.get_num_threads() < threads:
            torch.set_num_threads(threads)
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
