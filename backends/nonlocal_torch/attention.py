"""`capture_attention`: every non-local block's attention during ordinary forward passes.

Looking at what a block attends to used to mean a forward hook that called the block again
with ``return_attention=True`` - from inside the block's own call, which recursed. Here the
blocks hand over the (B, N, N') matrix they compute anyway: while the context is open, each
block of the model materialises its attention (the ``"pairwise"`` strategy) and passes it to
a sink set on the block; the model's outputs are what they would be otherwise (up to the
last bits, as between any two of the block's exact strategies).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn

from nonlocal_core.attention_maps import AttentionMaps as _CoreMaps
from nonlocal_core.attention_maps import attached, check_keep

from .block import NonLocalBlock


class AttentionMaps(_CoreMaps):
    """Module path -> the attention a_ij, ``(B, N, N')``, of the block at that path.

    A read-only mapping filled by `capture_attention` as the blocks run: by default each
    value is the block's last call's matrix (detached, on the block's device, in its compute
    dtype); with ``keep="all"`` it is the list of every call's, oldest first. Blocks that
    have not run are absent. `paths` lists every block the capture watches.
    """

    def convert(self, path: str, attention: Tensor) -> Tensor:
        return attention.detach()


@contextlib.contextmanager
def capture_attention(model: nn.Module, *, keep: str = "last") -> Iterator[AttentionMaps]:
    """Capture the attention of every `NonLocalBlock` in `model` while the context is open.

    Yields an `AttentionMaps`: module path (as in ``model.named_modules()``, e.g.
    ``"layer3.4.nonlocal_block"``) -> the ``(B, N, N')`` attention of that block's last call
    (``keep="last"``, the default), or the list of every call's (``keep="all"``). The maps
    are detached, so they keep no autograd graph alive, and they stay readable after the
    context closes. The model runs as usual - any number of calls, training or eval, with or
    without gradients - except that the blocks materialise their attention (the
    ``"pairwise"`` strategy: N x N' memory per block). Nested captures both receive the
    maps. On exit, even by an exception, every block is as it was.

    Under ``torch.compile`` the captured calls compile a graph of their own and are
    captured too. ``torch.export`` (and FX tracing) records the block as if no capture were
    open: nothing is captured, and the exported program keeps its linear strategies.

    Example:
        >>> import torch
        >>> from nonlocal_torch import NonLocal2d
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), NonLocal2d(8, subsample=True))
        >>> with capture_attention(net) as maps:
        ...     z = net(torch.randn(2, 3, 10, 10))
        >>> maps["1"].shape  # N = 8 * 8 queries, N' = 4 * 4 pooled keys
        torch.Size([2, 64, 16])
        >>> list(maps), maps["1"].requires_grad
        (['1'], False)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}: capture_attention "
            "watches the NonLocalBlock modules inside it"
        )
    check_keep(keep)
    blocks = [(path, m) for path, m in model.named_modules() if isinstance(m, NonLocalBlock)]
    if not blocks:
        raise ValueError(
            f"model ({type(model).__name__}) holds no NonLocalBlock: expected a network with "
            "non-local blocks (see nonlocal_torch.insert_nonlocal)"
        )
    with attached(AttentionMaps(tuple(path for path, _ in blocks), keep), blocks) as maps:
        yield maps
