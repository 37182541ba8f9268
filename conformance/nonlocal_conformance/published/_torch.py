"""What the adapters of published PyTorch modules share: weights in and out through
`nonlocal_core.convert`, forward and autograd gradients in NumPy.

A subclass names its profile source (``"mmcv"``, ``"pytorchvideo"``), its capabilities and
how to construct the module from the arguments `nonlocal_core.profiles.source_kwargs`
returns. Nothing here validates inputs the module does not validate itself: the point is to
measure the implementation, so a missing check shows up as a skipped (undeclared) error
check, never as a pass the adapter earned.

torch is imported when an adapter is constructed, never when this module is imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from nonlocal_core import NonLocalConfig, weight_shapes
from nonlocal_core.convert import from_state_dict, layout, to_state_dict
from nonlocal_core.profiles import ProfileError, source_kwargs

from ..adapter import Capabilities, Output, Unsupported

# The canonical weights that get no gradient (BN statistics are not trained).
NOT_TRAINABLE = ("norm.running_mean", "norm.running_var")
DTYPES = ("float64", "float32")


def require(*modules: str) -> None:
    """Raise `ModuleNotFoundError` naming the top-level `modules` that are not installed,
    without importing any of them (`--backend` then prints the pip hint of the backend).

    Example:
        >>> require("numpy")
        >>> require("numpy", "no_such_package_xyz")
        Traceback (most recent call last):
        ...
        ModuleNotFoundError: not installed: no_such_package_xyz
    """
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(f"not installed: {', '.join(missing)}", name=missing[0])


@dataclasses.dataclass
class Block:
    """A built module and what the adapter needs to talk canonical weights with it."""

    module: Any
    config: NonLocalConfig
    dtype: Any
    device: str


class PublishedTorchAdapter:
    """Base class: one published PyTorch non-local module behind the adapter protocol.

    Subclasses set `name`, `source` (a `nonlocal_core.profiles.SOURCES` name), `packages`
    (module names for `versions`) and implement `declared` and `construct`.
    """

    name = ""
    source = ""
    packages: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.torch = importlib.import_module("torch")
        devices = {"cpu"} | ({"cuda"} if self.torch.cuda.is_available() else set())
        self.capabilities = self.declared(frozenset(devices))
        self._dtypes = {name: getattr(self.torch, name) for name in DTYPES}

    # What a subclass provides --------------------------------------------------------------

    def declared(self, devices: frozenset[str]) -> Capabilities:
        """The capabilities of the implementation (from its profile)."""
        raise NotImplementedError

    def construct(self, kwargs: dict[str, Any]) -> Any:
        """The module `source_kwargs` describes (fresh, default initialisation)."""
        raise NotImplementedError

    def bias_before_norm(self, module: Any) -> Any:
        """The module whose output a canonical ``out.bias`` the implementation lacks would be
        added to (mmcv's conv before its norm), or None when every weight is a parameter."""
        return None

    def decline(self, config: NonLocalConfig, weights: Mapping[str, np.ndarray]) -> None:
        """Raise `Unsupported` for weights the module has no place for (after they are
        known to match the config)."""

    # The protocol --------------------------------------------------------------------------

    def versions(self) -> dict[str, str]:
        """Versions of the published package, torch and NumPy, for the report header."""
        out = {}
        for name in self.packages:
            out[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
        out["torch"] = self.torch.__version__
        out["numpy"] = np.__version__
        return out

    def build(
        self, config: NonLocalConfig, weights: Mapping[str, np.ndarray], *, dtype: str, device: str
    ) -> Block:
        """The real module `source_kwargs` gives for `config`, holding `weights`.

        A config the implementation cannot express raises `Unsupported` (the profile's
        reason). Weights that do not match the config raise `ValueError` naming the
        canonical weight, from the conversion into the module's state dict; the state dict
        is then loaded with ``strict=True``.
        """
        if dtype not in self._dtypes:
            raise Unsupported(f"{self.name}: dtype={dtype!r} is not declared")
        try:
            kwargs = source_kwargs(self.source, config)
        except ProfileError as exc:
            raise Unsupported(str(exc)) from None
        state = to_state_dict(weights, self.source, config)  # WeightError names the weight
        self.decline(config, weights)
        torch = self.torch
        module = self.construct(kwargs).to(device=device, dtype=self._dtypes[dtype])
        tensors = {key: torch.from_numpy(np.array(value)) for key, value in state.items()}
        module.load_state_dict(tensors, strict=True)
        return Block(module.eval(), config, self._dtypes[dtype], device)

    def _tensor(self, block: Block, array: Any) -> Any:
        t = self.torch.as_tensor(np.ascontiguousarray(array))
        if t.is_floating_point():
            t = t.to(block.dtype)  # exact: the suite's values are representable in the dtype
        return t.to(block.device)

    def forward(
        self,
        block: Block,
        x: np.ndarray,
        *,
        context: np.ndarray | None = None,
        key_mask: np.ndarray | None = None,
        training: bool = False,
        return_attention: bool = False,
    ) -> Output:
        """The module on x (channels first), in training or inference mode; BN running
        statistics are restored afterwards, so every call sees the built weights. The module
        returns no attention matrix: ``attention`` is None whatever `return_attention` says."""
        _refuse_options(self.name, context, key_mask)
        with _mode(self.torch, block.module, training), self.torch.no_grad():
            z = block.module(self._tensor(block, x))
        return Output(z=_numpy(self.torch, z), dtype=str(z.dtype).removeprefix("torch."))

    def export_weights(self, block: Block) -> dict[str, np.ndarray]:
        """The module's state dict read back into canonical weights (`from_state_dict`)."""
        state = {key: _numpy(self.torch, t) for key, t in block.module.state_dict().items()}
        return from_state_dict(state, self.source, block.config)

    def gradients(
        self,
        block: Block,
        x: np.ndarray,
        cotangent: np.ndarray,
        *,
        context: np.ndarray | None = None,
        key_mask: np.ndarray | None = None,
        training: bool = False,
    ) -> dict[str, np.ndarray]:
        """Autograd gradients of ``sum(z * cotangent)`` w.r.t. x and every trained canonical
        weight, mapped back to canonical names and shapes with the converter's layout."""
        _refuse_options(self.name, context, key_mask)
        torch, module, config = self.torch, block.module, block.config
        x_t = self._tensor(block, x).requires_grad_(True)
        cot = self._tensor(block, cotangent)
        params = dict(module.named_parameters())
        names = {
            entry.key: entry.canonical
            for entry in layout(self.source, config).entries
            if entry.canonical is not None and entry.canonical not in NOT_TRAINABLE
        }
        inputs = {canonical: params[key] for key, canonical in names.items()}
        hooks = []
        before_norm = self.bias_before_norm(module)
        if before_norm is not None:
            # The implementation has no W_z bias before its norm; the converter folds the
            # canonical out.bias into the running mean (BN(u + b) = BN'(u), running mean
            # minus b). Its gradient is that of a zero bias added where it would sit: adding
            # zero changes no value, so the forward is the module's own.
            bias = torch.zeros(config.in_channels, dtype=block.dtype, device=block.device)
            bias.requires_grad_(True)
            shape = (1, -1) + (1,) * config.spatial_dims
            hooks.append(before_norm.register_forward_hook(lambda m, i, o: o + bias.view(shape)))
            inputs["out.bias"] = bias
        try:
            with _mode(torch, module, training):
                z = module(x_t)
                grads = torch.autograd.grad(
                    (z * cot).sum(), [x_t, *inputs.values()], allow_unused=True
                )
        finally:
            for hook in hooks:
                hook.remove()
        shapes = weight_shapes(config)
        out = {"x": _numpy(torch, grads[0])}
        for (name, value), grad in zip(inputs.items(), grads[1:], strict=True):
            grad = torch.zeros_like(value) if grad is None else grad
            out[name] = _numpy(torch, grad).reshape(shapes[name])
        return out


def _refuse_options(name: str, context, key_mask) -> None:
    """The published blocks take x alone: no context or key mask. (They return no attention
    either; `forward` then returns ``attention=None``, as `Capabilities.attention` says.)"""
    asked = [
        option
        for option, value in (("context", context is not None), ("key_mask", key_mask is not None))
        if value
    ]
    if asked:
        raise Unsupported(f"{name}: the module has no {' or '.join(asked)} input")


def _numpy(torch: Any, t: Any) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy().copy()


@contextlib.contextmanager
def _mode(torch: Any, module: Any, training: bool) -> Iterator[None]:
    """Train or eval mode for one call; buffers (BN running statistics and batch counter)
    and the TF32 switches are restored afterwards (TF32 off: float32 means float32)."""
    saved = {name: b.clone() for name, b in module.named_buffers()}
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        module.train(training)  # raises for a non-boolean flag: the settings still come back
        yield
    finally:
        module.eval()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        with torch.no_grad():
            buffers = dict(module.named_buffers())
            for name, value in saved.items():
                buffers[name].copy_(value)
