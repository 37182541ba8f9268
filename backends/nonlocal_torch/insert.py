"""`insert_nonlocal`: non-local blocks into an existing network, right after named modules.

The paper's block is a plug-in: it goes after chosen residual blocks of a pretrained network
and, starting as the identity (BN gamma = beta = 0), changes nothing until it trains. Here a
block goes after each module named by its path (``"layer3.4"``), or at the places one of
the paper's recipes names for a ResNet with torchvision's naming (`RECIPES`).

Where the block lives - the state_dict key scheme. The block becomes a child named
``nonlocal_block`` of the module it follows, so every original key is unchanged (pretrained
weights still load) and the new ones are ``PATH.nonlocal_block.*``, e.g.
``layer3.4.nonlocal_block.g.weight``. (Not ``nonlocal``: a Python keyword, which
``torch.fx`` would write into generated code as an attribute name.) A forward hook of that
module applies the block to its output. A plain ``nn.Sequential`` runs all of its children
in order, so there the block is simply its last child: same key, no hook.

How the block's width and rank are read: statically, from the named module itself - no
forward pass, no example input. ``in_channels`` is the output width of its last registered
convolution or norm layer (``conv.out_channels``, ``bn.num_features``; in a torchvision
Bottleneck that is ``bn3`` or ``downsample.1``, both the block's output width), and
``spatial_dims`` the rank of its last convolution (2 for ``Conv2d``, 3 for ``Conv3d``).
Passing ``in_channels=`` or ``spatial_dims=`` overrides them; a module with no convolution or
norm layer needs them. A wrong width shows at the first forward pass, as the block's error
naming the channel count it got and the one it expected. The block takes the device and
dtype of that layer's weights, and the module's training mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .block import NonLocalBlock

BLOCK_NAME = "nonlocal_block"

# Recipe -> its places, per stage of torchvision's naming (res3 = layer2, res4 = layer3), as
# indices into the stage's residual blocks; "second_to_last" depends on the depth.
RECIPES: dict[str, dict[str, tuple[int, ...] | str]] = {
    # One block before the last residual block of res4 (layer3.4 in a ResNet-50).
    "wang2018-1": {"layer3": "second_to_last"},
    # Every other block of res3 and res4, as the authors' code places them.
    "wang2018-5": {"layer2": (1, 3), "layer3": (1, 3, 5)},
    # Every block of res3 and res4 of a ResNet-50 (4 + 6).
    "wang2018-10": {"layer2": (0, 1, 2, 3), "layer3": (0, 1, 2, 3, 4, 5)},
}

_WIDTH_LAYERS = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm)


def recipe_paths(model: nn.Module, recipe: str) -> list[str]:
    """The module paths a recipe of `RECIPES` puts blocks after, in `model`.

    Example:
        >>> from torch import nn
        >>> net = nn.Module()
        >>> net.layer2 = nn.Sequential(*[nn.Identity() for _ in range(4)])
        >>> net.layer3 = nn.Sequential(*[nn.Identity() for _ in range(6)])
        >>> recipe_paths(net, "wang2018-5")
        ['layer2.1', 'layer2.3', 'layer3.1', 'layer3.3', 'layer3.5']
        >>> recipe_paths(net, "wang2018-1")
        ['layer3.4']
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe={recipe!r} is unknown: expected one of {sorted(RECIPES)}")
    paths = []
    for stage, places in RECIPES[recipe].items():
        names = _stage_blocks(model, stage, recipe)
        if places == "second_to_last":
            if len(names) < 2:
                raise ValueError(
                    f"at={recipe!r} puts a block before the last residual block of {stage}, "
                    f"but the model's {stage} has {len(names)}: expected at least 2; pass "
                    "module paths instead"
                )
            places = (len(names) - 2,)
        for index in places:
            if not 0 <= index < len(names):
                raise ValueError(
                    f"at={recipe!r} puts a block after {stage}.{index}, but the model's "
                    f"{stage} has {len(names)} residual blocks ({_listing(names)}): the "
                    "recipe expects a ResNet-50 or deeper with torchvision's naming; pass "
                    "module paths instead"
                )
            paths.append(f"{stage}.{names[index]}")
    return paths


def insert_nonlocal(model: nn.Module, at: str | Sequence[str], **block_kwargs: Any) -> nn.Module:
    """Insert a `NonLocalBlock` right after each module `at` names; returns `model`, changed
    in place.

    `at` is a list of module paths (``["layer2.1", "layer3.3"]``, as in
    ``model.named_modules()``) or a recipe of `RECIPES` for ResNets with torchvision's
    naming: ``"wang2018-1"`` (after ``layer3.4`` of a ResNet-50), ``"wang2018-5"`` (after
    ``layer2.1``, ``layer2.3``, ``layer3.1``, ``layer3.3``, ``layer3.5``) or
    ``"wang2018-10"`` (after every block of ``layer2`` and ``layer3``). `block_kwargs` go to
    every block (``subsample=True``, ``instantiation="dot_product"``, ...); ``in_channels``
    and ``spatial_dims`` are read from the model (see the module docstring).

    Each block is the child ``nonlocal_block`` of the module it follows: original
    state_dict keys are unchanged, new ones are ``PATH.nonlocal_block.*``. New blocks are
    the identity, so the model computes exactly what it did until it trains. Insert before
    wrapping the model (DDP, ``torch.compile``), then build the optimiser. Everything is
    checked before anything changes: a call that raises leaves the model as it was.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3))
        >>> x = torch.randn(1, 3, 12, 12)
        >>> before = net(x)
        >>> net = insert_nonlocal(net, ["0", "2"], subsample=True)
        >>> [name for name, _ in net.named_modules() if name.endswith(BLOCK_NAME)]
        ['0.nonlocal_block', '2.nonlocal_block']
        >>> net.get_submodule("2.nonlocal_block").config.in_channels
        16
        >>> torch.equal(net(x), before)  # new blocks are the identity
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}: insert_nonlocal "
            "changes a PyTorch network in place"
        )
    paths = _paths(model, at)
    targets = [_target(model, path, _where(at, index, path)) for index, path in enumerate(paths)]
    first: dict[int, str] = {}
    for index, (path, module) in enumerate(zip(paths, targets)):
        # One module registered under two paths would get two hooks and one block.
        other = first.setdefault(id(module), path)
        if other != path:
            raise ValueError(
                f"{_where(at, index, path)} is the module {other!r} under another path: "
                "expected each module once (one block per module)"
            )
    blocks = [
        _new_block(module, _where(at, index, path), block_kwargs)
        for index, (path, module) in enumerate(zip(paths, targets))
    ]
    for module, block in zip(targets, blocks):
        module.add_module(BLOCK_NAME, block)
        if not _runs_children_in_order(module):
            module.register_forward_hook(_apply_block)
    return model


def _apply_block(module: nn.Module, args: Any, output: Tensor) -> Tensor:
    """The forward hook: the module's output through its non-local block."""
    return module.nonlocal_block(output)


def _runs_children_in_order(module: nn.Module) -> bool:
    # A plain nn.Sequential calls every child, so a block appended as its last child runs
    # after the others; a hook as well would run it twice.
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _paths(model: nn.Module, at: Any) -> list[str]:
    """`at` as a checked list of module paths (a recipe's, or the given ones)."""
    if isinstance(at, str):
        if at in RECIPES:
            return recipe_paths(model, at)
        raise ValueError(
            f"at={at!r} is not a recipe: expected one of {sorted(RECIPES)}, or a list of "
            f"module paths (at=[{at!r}] for a block after that module)"
        )
    if not isinstance(at, Sequence) or not at:
        raise TypeError(
            f"at={at!r} is invalid: expected a recipe name ({', '.join(sorted(RECIPES))}) "
            "or a non-empty list of module paths such as ['layer3.4']"
        )
    seen: set[str] = set()
    for index, path in enumerate(at):
        if not isinstance(path, str):
            raise TypeError(
                f"at[{index}]={path!r} is invalid: expected a module path (str) such as 'layer3.4'"
            )
        if path in seen:
            raise ValueError(
                f"at[{index}]={path!r} is a duplicate: expected each module path once (one "
                "block per module)"
            )
        seen.add(path)
    return list(at)


def _where(at: Any, index: int, path: str) -> str:
    """How error messages name one place: ``at[1]='layer3.9'`` or the recipe's path."""
    if isinstance(at, str):
        return f"at={at!r} (module {path!r})"
    return f"at[{index}]={path!r}"


def _target(model: nn.Module, path: str, where: str) -> nn.Module:
    """The module `path` names, checked to be one a block can follow."""
    module = model
    walked = ""
    for part in path.split(".") if path else ():
        owner = f"module {walked!r}" if walked else "the model"
        if isinstance(module, NonLocalBlock):
            raise ValueError(
                f"{where} is inside the non-local block {walked!r}: expected a module of the "
                "network itself"
            )
        child = module._modules.get(part)
        if child is None:
            if part in module._parameters or part in module._buffers:
                kind = "parameter" if part in module._parameters else "buffer"
                raise ValueError(
                    f"{where} names a {kind} of {owner}, not a module: expected the path of "
                    "a module, such as a residual block ('layer3.4')"
                )
            raise ValueError(
                f"{where} names no module: {owner} ({type(module).__name__}) has no child "
                f"{part!r}; its children are {_listing(list(module._modules))}"
            )
        module = child
        walked = f"{walked}.{part}" if walked else part
    kind = type(module).__name__
    if isinstance(module, NonLocalBlock):
        raise ValueError(
            f"{where} is a non-local block: expected a module of the network to put a block after"
        )
    if isinstance(module, nn.ModuleList | nn.ModuleDict):
        raise ValueError(
            f"{where} is a {kind}, which is never called itself: expected a module that "
            "runs, such as one of its items"
        )
    if isinstance(module._modules.get(BLOCK_NAME), NonLocalBlock):
        full = f"{path}.{BLOCK_NAME}" if path else BLOCK_NAME
        raise ValueError(
            f"{where} already has a non-local block ({full!r}): expected a module without "
            "one (was insert_nonlocal applied twice?)"
        )
    if BLOCK_NAME in module._modules or hasattr(module, BLOCK_NAME):
        raise ValueError(
            f"{where} ({kind}) already has an attribute {BLOCK_NAME!r}, where the block would "
            "go: expected a module without one"
        )
    return module


def _new_block(module: nn.Module, where: str, block_kwargs: dict[str, Any]) -> NonLocalBlock:
    """The block for the output of `module`: width, rank, device and dtype read from it."""
    kwargs = dict(block_kwargs)
    width_layer = None
    conv = None
    for sub in module.modules():
        if isinstance(sub, NonLocalBlock):
            continue
        if isinstance(sub, _WIDTH_LAYERS):
            width_layer = sub
        if isinstance(sub, nn.modules.conv._ConvNd):
            conv = sub
    missing = [
        name
        for name, found in (("in_channels", width_layer), ("spatial_dims", conv))
        if name not in kwargs and found is None
    ]
    if missing:
        raise ValueError(
            f"{where} ({type(module).__name__}) holds no "
            f"{'convolution or norm layer' if 'in_channels' in missing else 'convolution'} "
            f"to read {' and '.join(missing)} from: pass "
            f"{', '.join(f'{name}=...' for name in missing)} to insert_nonlocal"
        )
    if "in_channels" not in kwargs:
        kwargs["in_channels"] = _width(width_layer)
    if "spatial_dims" not in kwargs:
        kwargs["spatial_dims"] = len(conv.kernel_size)
    weight = getattr(width_layer or conv, "weight", None)
    if isinstance(weight, Tensor) and not isinstance(weight, nn.parameter.UninitializedParameter):
        kwargs.setdefault("device", weight.device)
        if weight.is_floating_point():
            kwargs.setdefault("dtype", weight.dtype)
    block = NonLocalBlock(kwargs.pop("in_channels"), **kwargs)
    return block.train(module.training)


def _width(layer: nn.Module) -> int:
    if isinstance(layer, nn.modules.conv._ConvNd):
        return layer.out_channels
    if isinstance(layer, nn.GroupNorm):
        return layer.num_channels
    return layer.num_features


def _stage_blocks(model: nn.Module, stage: str, recipe: str) -> list[str]:
    """The child names of `model.<stage>` that are residual blocks (not inserted blocks)."""
    container = model._modules.get(stage)
    if container is None:
        raise ValueError(
            f"at={recipe!r} needs a module {stage!r} (torchvision's ResNet naming: "
            f"layer1..layer4 of residual blocks), but the model ({type(model).__name__}) has "
            f"none; its children are {_listing(list(model._modules))}: pass module paths "
            "instead"
        )
    return [
        name
        for name, child in container._modules.items()
        if child is not None and not isinstance(child, NonLocalBlock)
    ]


def _listing(names: list[str], limit: int = 12) -> str:
    """`names` for an error message, shortened past `limit`."""
    if not names:
        return "none"
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
