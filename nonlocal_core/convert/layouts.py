"""Where each published implementation keeps each canonical weight: names and shapes.

A `Layout` lists, for one source and one config, every tensor of that implementation's
block - its name relative to the block, the shape it has there, and the canonical weight it
holds. The tables follow each project's module structure (read from their sources; see
`shared/notes/anchors.md` and spec Appendix A):

========== ===================================================== ========================
source     projections theta / phi / g / W_z                       norm after W_z
========== ===================================================== ========================
paper      the canonical names: ``theta.weight`` (C', C) ...       ``norm.gamma`` ...
caffe2     ``{p}_theta_w`` (C', C, 1, 1, 1), ``{p}_theta_b`` ...   ``{p}_bn_s/_b/_rm/_riv``
alexhex7   ``theta``, ``phi[.0]``, ``g[.0]``, ``W[.0]``            ``W.1``
mmcv       ``theta.conv``, ``phi[.0].conv``, ``g[.0].conv``,       ``conv_out.bn``
           ``conv_out.conv``
slowfast   ``conv_theta``, ``conv_phi``, ``conv_g``, ``conv_out``  ``bn``
pytorchvid ``conv_theta``, ``conv_phi``, ``conv_g``, ``conv_out``  ``norm``
timm       ``t``, ``p``, ``g``, ``z``                              ``norm``
========== ===================================================== ========================

(``[.0]``: the projection sits in an ``nn.Sequential`` with the max pool when subsampling.)
The concatenation weight w_f is ``concat_project.0.weight`` (AlexHex7) or
``concat_project.conv.weight`` (mmcv), a ``(1, 2C', 1, 1)`` Conv2d kernel.
"""

from __future__ import annotations

import dataclasses

from ..config import NonLocalConfig
from ..profiles import SOURCES, source_kwargs
from ..weights import weight_shapes

# torch BatchNorm attribute -> canonical norm name.
_TORCH_NORM = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "running_mean",
    "running_var": "running_var",
}
# Caffe2 SpatialBN blobs (scale, bias, running mean, running variance; "riv" holds the
# variance despite its name, as every port of these checkpoints reads it).
_CAFFE2_NORM = {"s": "gamma", "b": "beta", "rm": "running_mean", "riv": "running_var"}
COUNTER = "num_batches_tracked"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor of a source's block: its name there, its shape there, what it holds.

    ``canonical`` is None for torch's BN batch counter ``num_batches_tracked``, which holds
    no weight (it matters only with ``momentum=None``): ignored on reading, written as 0.
    """

    key: str
    shape: tuple[int, ...]
    canonical: str | None


@dataclasses.dataclass(frozen=True)
class Layout:
    """Every tensor of one source's block for one config.

    ``separator`` joins a module prefix to the names (``"."`` for PyTorch modules, ``"_"``
    for Caffe2 blobs). ``out_bias_in_norm``: the source has no W_z bias because a norm
    follows (mmcv); the canonical ``out.bias`` is 0 on reading and is folded into the
    norm's running mean on writing. ``ignored_suffixes``: checkpoint entries that belong to
    the block but hold no weight (Caffe2's optimiser ``_momentum`` blobs).
    """

    source: str
    separator: str
    entries: tuple[Entry, ...]
    out_bias_in_norm: bool = False
    ignored_suffixes: tuple[str, ...] = ()

    @property
    def anchor(self) -> Entry:
        """The entry every block of this layout has (g's weight): finds a block's prefix."""
        return next(e for e in self.entries if e.canonical == "g.weight")

    def keys(self) -> list[str]:
        return [e.key for e in self.entries]


def layout(source: str, config: NonLocalConfig) -> Layout:
    """The names and shapes `source` gives `config`'s weights.

    Raises `nonlocal_core.profiles.ProfileError` when `source` cannot express `config`
    (a concatenation for SlowFast, a 2-D block for Caffe2...): its weights would load there
    but compute something else. ``"paper"`` - the canonical names - holds any config.

    Example:
        >>> cfg = NonLocalConfig(8, spatial_dims=2, instantiation="dot_product", norm=None)
        >>> [(e.key, e.shape) for e in layout("mmcv", cfg).entries][:2]
        [('theta.conv.weight', (4, 8, 1, 1)), ('theta.conv.bias', (4,))]
    """
    if source not in _LAYOUTS:
        raise ValueError(f"source={source!r} is invalid: expected one of {SOURCES}")
    if source != "paper":
        source_kwargs(source, config)  # ProfileError when the source cannot express it
    return _LAYOUTS[source](config)


def _projection_shapes(config: NonLocalConfig) -> dict[str, tuple[int, ...]]:
    return {
        name: shape
        for name, shape in weight_shapes(config).items()
        if not name.startswith("norm.") and name != "concat.weight"
    }


def _entries(
    config: NonLocalConfig,
    names: dict[str, str],
    kernel_rank: int,
    norm: str | None,
    concat: str | None = None,
    skip: tuple[str, ...] = (),
) -> tuple[Entry, ...]:
    """Entries of a PyTorch-style block: `names` maps theta/phi/g/out to module paths."""
    entries = []
    for name, shape in _projection_shapes(config).items():
        module, kind = name.split(".")
        if name in skip:
            continue
        if kind == "weight":
            shape = shape + (1,) * (kernel_rank - 2)
        entries.append(Entry(f"{names[module]}.{kind}", shape, name))
    if config.instantiation == "concatenation":
        entries.append(Entry(concat, (1, 2 * config.inter_channels, 1, 1), "concat.weight"))
    if config.norm == "batch":
        c = config.in_channels
        entries += [
            Entry(f"{norm}.{attr}", (c,), f"norm.{canonical}")
            for attr, canonical in _TORCH_NORM.items()
        ]
        entries.append(Entry(f"{norm}.{COUNTER}", (), None))
    return tuple(entries)


def _paper(config: NonLocalConfig) -> Layout:
    return Layout("paper", ".", tuple(Entry(n, s, n) for n, s in weight_shapes(config).items()))


def _alexhex7(config: NonLocalConfig) -> Layout:
    pooled = ".0" if config.subsample is not None else ""
    with_norm = config.norm == "batch"
    names = {
        "theta": "theta",
        "phi": f"phi{pooled}",
        "g": f"g{pooled}",
        "out": "W.0" if with_norm else "W",
    }
    entries = _entries(config, names, config.spatial_dims + 2, "W.1", "concat_project.0.weight")
    return Layout("alexhex7", ".", entries)


def _mmcv(config: NonLocalConfig) -> Layout:
    pooled = ".0" if config.subsample is not None else ""
    names = {
        "theta": "theta.conv",
        "phi": f"phi{pooled}.conv",
        "g": f"g{pooled}.conv",
        "out": "conv_out.conv",
    }
    with_norm = config.norm == "batch"
    # mmcv's ConvModule drops the conv bias when a norm follows it.
    skip = ("out.bias",) if with_norm else ()
    entries = _entries(
        config, names, config.spatial_dims + 2, "conv_out.bn", "concat_project.conv.weight", skip
    )
    return Layout("mmcv", ".", entries, out_bias_in_norm=with_norm)


_VIDEO_NAMES = {"theta": "conv_theta", "phi": "conv_phi", "g": "conv_g", "out": "conv_out"}


def _slowfast(config: NonLocalConfig) -> Layout:
    return Layout("slowfast", ".", _entries(config, _VIDEO_NAMES, 5, "bn"))


def _pytorchvideo(config: NonLocalConfig) -> Layout:
    return Layout("pytorchvideo", ".", _entries(config, _VIDEO_NAMES, 5, "norm"))


def _timm(config: NonLocalConfig) -> Layout:
    names = {"theta": "t", "phi": "p", "g": "g", "out": "z"}
    return Layout("timm", ".", _entries(config, names, 4, "norm"))


def _caffe2(config: NonLocalConfig) -> Layout:
    entries = []
    for name, shape in _projection_shapes(config).items():
        module, kind = name.split(".")
        blob = "w" if kind == "weight" else "b"
        entries.append(Entry(f"{module}_{blob}", (*shape, 1, 1, 1) if blob == "w" else shape, name))
    if config.norm == "batch":
        c = config.in_channels
        entries += [
            Entry(f"bn_{blob}", (c,), f"norm.{canonical}")
            for blob, canonical in _CAFFE2_NORM.items()
        ]
    return Layout("caffe2", "_", tuple(entries), ignored_suffixes=("_momentum",))


_LAYOUTS = {
    "paper": _paper,
    "caffe2": _caffe2,
    "alexhex7": _alexhex7,
    "mmcv": _mmcv,
    "slowfast": _slowfast,
    "pytorchvideo": _pytorchvideo,
    "timm": _timm,
}
