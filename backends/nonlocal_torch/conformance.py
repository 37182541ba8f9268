"""`TorchAdapter`: drives `NonLocalBlock` through the conformance suite's adapter protocol.

Run the suite against it with ``pytest conformance --backend=torch`` (add
``--device=cuda`` on a GPU). Arrays arrive as NumPy holding values representable in the
dtype under test (bfloat16 values in float32 arrays), so converting them is exact.

``NONLOCAL_TORCH_STRATEGY`` forces execution strategies: a comma-separated list, of which
each block takes the first its instantiation can run (else ``auto``), e.g.
``NONLOCAL_TORCH_STRATEGY=chunked,pairwise`` or ``sdpa,associative,sorted``.

Example:
    >>> import numpy as np
    >>> from nonlocal_core import NonLocalConfig, init_weights
    >>> adapter = TorchAdapter()
    >>> cfg = NonLocalConfig(4, spatial_dims=1)
    >>> block = adapter.build(cfg, init_weights(cfg), dtype="float32", device="cpu")
    >>> x = np.ones((2, 4, 3), dtype=np.float32)
    >>> out = adapter.forward(block, x)
    >>> out.dtype, bool((out.z == x).all())
    ('float32', True)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from nonlocal_conformance.adapter import Capabilities, Output
from nonlocal_core import NonLocalConfig

from .block import NonLocalBlock
from .strategies import ALLOWED_STRATEGIES, STRATEGIES

STRATEGY_ENV = "NONLOCAL_TORCH_STRATEGY"

TORCH_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_NAMES = {dtype: name for name, dtype in TORCH_DTYPES.items()}


def _devices() -> frozenset[str]:
    return frozenset({"cpu", "cuda"}) if torch.cuda.is_available() else frozenset({"cpu"})


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as NumPy on the CPU; bfloat16 (which NumPy lacks) widens exactly to float32.

    Example:
        >>> to_numpy(torch.tensor([1.5], dtype=torch.bfloat16)).dtype
        dtype('float32')
    """
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()


class TorchAdapter:
    """The conformance adapter of `nonlocal_torch` (see `nonlocal_conformance.adapter.Adapter`).

    float32 on CUDA: TF32 is switched off while the adapter runs (full float32 matmuls and
    convolutions), so float32 results are held to float32 tolerances; enable TF32 yourself
    for speed in training code.

    Example:
        >>> TorchAdapter().capabilities.supports(dtype="bfloat16", gradients=True)
        True
    """

    name = "torch"

    def __init__(self) -> None:
        forced = os.environ.get(STRATEGY_ENV, "")
        self.forced = tuple(s.strip() for s in forced.split(",") if s.strip())
        unknown = [s for s in self.forced if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"{STRATEGY_ENV}={forced!r}: unknown {unknown}, expected {STRATEGIES}")
        self.capabilities = Capabilities(
            dtypes=frozenset(TORCH_DTYPES),
            devices=_devices(),
            gradients=True,
        )

    def versions(self) -> dict[str, str]:
        """Library versions for the report header."""
        out = {"torch": torch.__version__, "numpy": np.__version__}
        if torch.cuda.is_available():
            out["cuda"] = str(torch.version.cuda)
            out["gpu"] = torch.cuda.get_device_name()
        return out

    def options(self) -> dict[str, str]:
        """What changes the run: the execution strategy forced through the environment.

        Example:
            >>> TorchAdapter().options()["strategy"] in ("auto", "chunked,sorted")
            True
        """
        return {"strategy": ",".join(self.forced) or "auto"}

    def build(
        self, config: NonLocalConfig, weights: Mapping[str, np.ndarray], *, dtype: str, device: str
    ) -> NonLocalBlock:
        """A `NonLocalBlock` with exactly `weights`, in `dtype` on `device` (eval mode)."""
        if dtype not in TORCH_DTYPES:
            raise ValueError(
                f"dtype={dtype!r} is not supported: expected one of {list(TORCH_DTYPES)}"
            )
        strategy = next(
            (s for s in self.forced if s in ALLOWED_STRATEGIES[config.instantiation]), "auto"
        )
        block = NonLocalBlock.from_config(
            config, dtype=TORCH_DTYPES[dtype], device=device, strategy=strategy
        )
        block.load_canonical_weights(weights)
        return block.eval()

    def _tensor(self, block: NonLocalBlock, array: Any, grad: bool = False) -> Any:
        if array is None:
            return None
        ref = block.g.weight
        if isinstance(array, np.ndarray) and array.dtype == np.bool_:
            return torch.from_numpy(array).to(ref.device)
        if not isinstance(array, np.ndarray):
            raise TypeError(f"expected a NumPy array, got {type(array).__name__}")
        t = torch.from_numpy(np.ascontiguousarray(array))
        if t.is_floating_point():
            # Exact: the suite hands over values already representable in the block's dtype.
            t = t.to(ref.dtype)
        t = t.to(ref.device)
        return t.requires_grad_(True) if grad else t

    def forward(
        self,
        block: NonLocalBlock,
        x: np.ndarray,
        *,
        context: np.ndarray | None = None,
        key_mask: np.ndarray | None = None,
        training: bool = False,
        return_attention: bool = False,
    ) -> Output:
        """Run the block; BN running statistics are left as they were (forward is pure here)."""
        with _mode(block, training), torch.no_grad():
            out = block(
                self._tensor(block, x),
                context=self._tensor(block, context),
                key_mask=self._tensor(block, key_mask),
                return_attention=return_attention,
            )
        z, attention = out if return_attention else (out, None)
        return Output(
            z=to_numpy(z),
            dtype=_NAMES[z.dtype],
            attention=None if attention is None else to_numpy(attention),
        )

    def export_weights(self, block: NonLocalBlock) -> dict[str, np.ndarray]:
        """The block's canonical weights as NumPy (bfloat16 widened to float32)."""
        return {name: to_numpy(t) for name, t in block.canonical_weights().items()}

    def gradients(
        self,
        block: NonLocalBlock,
        x: np.ndarray,
        cotangent: np.ndarray,
        *,
        context: np.ndarray | None = None,
        key_mask: np.ndarray | None = None,
        training: bool = False,
    ) -> dict[str, np.ndarray]:
        """Gradients of ``sum(z * cotangent)`` w.r.t. x, context and the canonical weights."""
        x_t = self._tensor(block, x, grad=True)
        ctx_t = self._tensor(block, context, grad=True)
        cot = self._tensor(block, cotangent)
        params = {
            name: t
            for name, t in block._canonical_slots().items()
            if not name.startswith("norm.running_")
        }
        with _mode(block, training):
            block.zero_grad(set_to_none=True)
            z = block(x_t, context=ctx_t, key_mask=self._tensor(block, key_mask))
            inputs = [x_t] + ([ctx_t] if ctx_t is not None else []) + list(params.values())
            grads = torch.autograd.grad((z * cot).sum(), inputs, allow_unused=True)
        out = {"x": grads[0]}
        if ctx_t is not None:
            out["context"] = grads[1]
        offset = 1 + (ctx_t is not None)
        shapes = {name: t.shape for name, t in block.canonical_weights().items()}
        for (name, param), grad in zip(params.items(), grads[offset:], strict=True):
            out[name] = torch.zeros_like(param) if grad is None else grad
        return {
            name: to_numpy(g.reshape(shapes[name]) if name in shapes else g)
            for name, g in out.items()
        }


@contextlib.contextmanager
def _mode(block: NonLocalBlock, training: bool) -> Iterator[None]:
    """Train/eval mode for one call, restoring BN running stats and TF32 settings after."""
    saved = None
    if block.norm is not None:
        saved = {k: v.clone() for k, v in block.norm.state_dict().items()}
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        block.train(training)  # raises for a non-boolean flag: the settings still come back
        yield
    finally:
        block.eval()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        if saved is not None:
            block.norm.load_state_dict(saved)
