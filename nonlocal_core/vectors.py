"""Golden test vectors: small cases any implementation, in any language, can replay.

``python -m nonlocal_core.vectors`` writes ``spec/vectors/`` (or ``--out DIR``); with
``--check`` it regenerates in memory and fails on any difference from the files. The format
is specified in ``spec/nonlocal.md`` (section "Golden vectors"): one JSON file per case plus
``index.json``; every tensor is ``{"shape": [...], "dtype": "float64" | "bool", "data": [...]}``
with ``data`` flattened row-major and floats written as shortest round-trip decimals.

Inputs and weights come from NumPy's seeded generator (no BLAS: the same bytes everywhere);
the expected z and attention from `nonlocal_core.oracle`, the exact result correctly rounded
to float64, so the files are the same bytes on every machine (the float64 reference's own
results differ in the last bits between BLAS kernels). Generating needs ``mpmath``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .cli import output_folder
from .config import SPEC_VERSION, NonLocalConfig
from .oracle import exact_forward
from .profiles import CAFFE2_BN_EPSILON, profile
from .vector_files import VectorFileError, load_case
from .weights import init_weights, random_weights

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "spec" / "vectors"

# load_case and VectorFileError live in vector_files (reading); they stay importable here.
__all__ = [
    "CASES",
    "DEFAULT_DIR",
    "VectorFileError",
    "build_case",
    "generate",
    "load_case",
    "main",
    "render",
]


def _case(name: str, description: str, config: dict, **options: Any) -> dict:
    return {"name": name, "description": description, "config": config, **options}


# Each case: (B, spatial extent of x), optional context extent, mask pattern, mode, and the
# seed of its inputs and weights (default: its index in CASES).
CASES = [
    _case(
        "embedded_2d",
        "embedded Gaussian, 2D, channels_first, inference",
        {"in_channels": 4},
        x=(2, (3, 4)),
    ),
    _case(
        "embedded_3d_subsample_train",
        "embedded Gaussian, 3D, subsample=True (1,2,2) after projection, training-mode BN",
        {"in_channels": 4, "spatial_dims": 3, "subsample": True},
        x=(2, (2, 4, 4)),
        training=True,
    ),
    _case(
        "embedded_3d_cl_before",
        "embedded Gaussian, 3D channels_last, pooled before the projections (Caffe2/SlowFast)",
        {
            "in_channels": 6,
            "spatial_dims": 3,
            "subsample": True,
            "pool_position": "before_projection",
            "data_format": "channels_last",
        },
        x=(1, (2, 4, 5)),
    ),
    _case(
        "embedded_unscaled_eps",
        "embedded Gaussian without logit scale (the paper's formula), Caffe2's BN eps",
        {"in_channels": 4, "spatial_dims": 1, "logit_scale": False, "norm_eps": 1.0000001e-5},
        x=(2, (7,)),
    ),
    _case(
        "embedded_scale_timm",
        "embedded Gaussian with an explicit logit scale 1/sqrt(C) (timm)",
        {"in_channels": 8, "inter_channels": 3, "logit_scale": 8**-0.5},
        x=(1, (3, 3)),
    ),
    _case(
        "gaussian_1d",
        "Gaussian (raw features), 1D, channels_first",
        {"in_channels": 3, "spatial_dims": 1, "instantiation": "gaussian"},
        x=(2, (6,)),
    ),
    _case(
        "gaussian_2d_cl_subsample",
        "Gaussian, 2D channels_last, keys pooled (2,2)",
        {
            "in_channels": 4,
            "instantiation": "gaussian",
            "subsample": True,
            "data_format": "channels_last",
        },
        x=(2, (4, 5)),
    ),
    _case(
        "gaussian_3d_before_train",
        "Gaussian, 3D, pooled before projection, training",
        {
            "in_channels": 2,
            "spatial_dims": 3,
            "instantiation": "gaussian",
            "subsample": [2, 1, 2],
            "pool_position": "before_projection",
        },
        x=(2, (2, 3, 4)),
        training=True,
    ),
    _case(
        "dot_2d_subsample_mask",
        "dot product, 2D, subsample after projection, key mask",
        {"in_channels": 4, "instantiation": "dot_product", "subsample": True},
        x=(2, (4, 4)),
        mask="random",
    ),
    _case(
        "dot_3d_cl_before_train",
        "dot product, 3D channels_last, pooled before projection, training",
        {
            "in_channels": 4,
            "spatial_dims": 3,
            "instantiation": "dot_product",
            "subsample": True,
            "pool_position": "before_projection",
            "data_format": "channels_last",
        },
        x=(2, (2, 4, 4)),
        training=True,
    ),
    _case(
        "dot_1d_no_norm",
        "dot product, 1D, no norm",
        {"in_channels": 5, "spatial_dims": 1, "instantiation": "dot_product", "norm": None},
        x=(2, (5,)),
    ),
    _case(
        "concat_1d",
        "concatenation, 1D",
        {"in_channels": 4, "spatial_dims": 1, "instantiation": "concatenation"},
        x=(2, (6,)),
    ),
    _case(
        "concat_2d_cl_subsample_mask",
        "concatenation, 2D channels_last, subsample, key mask "
        "with a fully masked batch element (y = 0 there)",
        {
            "in_channels": 4,
            "instantiation": "concatenation",
            "subsample": True,
            "data_format": "channels_last",
        },
        x=(2, (4, 4)),
        mask="empty_row",
        # The case's index as seed gave ReLU(w_f . [theta_i; phi_j]) = 0 for every pair.
        seed=107,
    ),
    _case(
        "concat_3d_before_train",
        "concatenation, 3D, pooled before projection, training",
        {
            "in_channels": 4,
            "spatial_dims": 3,
            "instantiation": "concatenation",
            "subsample": True,
            "pool_position": "before_projection",
        },
        x=(2, (2, 4, 4)),
        training=True,
    ),
    _case(
        "context_embedded_2d",
        "embedded Gaussian with a context of other channels and extent",
        {"in_channels": 4, "context_channels": 6},
        x=(2, (3, 3)),
        context=(4, 5),
    ),
    _case(
        "context_concat_3d_cl",
        "concatenation with a context, 3D channels_last, subsample",
        {
            "in_channels": 4,
            "spatial_dims": 3,
            "context_channels": 3,
            "instantiation": "concatenation",
            "subsample": True,
            "data_format": "channels_last",
        },
        x=(2, (2, 2, 2)),
        context=(3, 4, 5),
        seed=107,  # as above: a seed whose attention is not all 0
    ),
    _case(
        "context_gaussian_1d",
        "Gaussian with a context (same channels, other length)",
        {"in_channels": 3, "spatial_dims": 1, "instantiation": "gaussian"},
        x=(1, (4,)),
        context=(9,),
    ),
    _case(
        "mask_embedded_empty_row",
        "embedded Gaussian with a key mask, one batch element has no valid key (y = 0 there)",
        {"in_channels": 4, "spatial_dims": 1},
        x=(2, (5,)),
        mask="empty_row",
    ),
    _case(
        "remainder_dropped",
        "explicit windows (3, 2) on extents (7, 5): trailing positions dropped (floor)",
        {"in_channels": 2, "instantiation": "dot_product", "subsample": [3, 2]},
        x=(1, (7, 5)),
    ),
    _case(
        "no_norm_no_residual",
        "embedded Gaussian, no norm, no residual",
        {"in_channels": 4, "norm": None, "residual": False},
        x=(2, (2, 3)),
    ),
    _case(
        "train_no_residual",
        "embedded Gaussian, training-mode BN, no residual",
        {"in_channels": 4, "residual": False},
        x=(3, (2, 2)),
        training=True,
    ),
    _case(
        "identity_at_init",
        "the spec's initialisation: z = x exactly",
        {"in_channels": 4, "spatial_dims": 3, "subsample": True},
        x=(2, (2, 4, 4)),
        weights="init",
    ),
    _case(
        "identity_at_init_no_norm",
        "the spec's initialisation without norm (W_z = 0)",
        {"in_channels": 4, "instantiation": "concatenation", "norm": None},
        x=(1, (3, 3)),
        weights="init",
        training=True,
    ),
    _case(
        "caffe2_slowfast_3d",
        "the Caffe2 (video-nonlocal-net) / SlowFast block: embedded Gaussian scaled by "
        "1/sqrt(C'), 3D channels_first, keys and values max-pooled (1,2,2) before the "
        "projections (odd extents: floor drops a row and a column), Caffe2's BN eps, inference",
        # What profile("slowfast", dim=4, dim_inner=4 // 2, pool_size=[1, 2, 2],
        # norm_eps=CAFFE2_BN_EPSILON) builds too.
        profile(
            "caffe2", dim_in=4, dim_inner=2, max_pool_stride=2, BN_EPSILON=CAFFE2_BN_EPSILON
        ).to_dict(),
        x=(2, (2, 3, 5)),
    ),
]


def _tensor(array: np.ndarray) -> dict:
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return {"shape": list(array.shape), "dtype": "bool", "data": array.ravel().tolist()}
    values = array.astype(np.float64).ravel().tolist()
    return {"shape": list(array.shape), "dtype": "float64", "data": values}


def _inputs(case: dict, config: NonLocalConfig, rng: np.random.Generator) -> dict:
    batch, extent = case["x"]

    def features(spatial, channels):
        if config.data_format == "channels_first":
            return rng.normal(size=(batch, channels, *spatial))
        return rng.normal(size=(batch, *spatial, channels))

    x = features(extent, config.in_channels)
    ctx_extent = case.get("context")
    context = None if ctx_extent is None else features(ctx_extent, config.context_channels)
    key_mask = None
    if "mask" in case:
        keys = config.pooled_extent(extent if ctx_extent is None else ctx_extent)
        key_mask = rng.random((batch, *keys)) < 0.6
        key_mask[0].flat[0] = True  # every case keeps at least one valid key in element 0
        if case["mask"] == "empty_row":
            key_mask[-1] = False
    return {"x": x, "context": context, "key_mask": key_mask}


def build_case(case: dict, seed: int) -> dict:
    """Compute one golden case (inputs, weights, exact expected outputs) from its recipe.

    Example:
        >>> c = build_case(CASES[0], seed=0)
        >>> c["expected"]["z"]["shape"]
        [2, 4, 3, 4]
    """
    config = NonLocalConfig.from_dict(case["config"])
    rng = np.random.default_rng(seed)
    inputs = _inputs(case, config, rng)
    if case.get("weights") == "init":
        weights = init_weights(config, seed=seed)
    else:
        weights = random_weights(config, seed=seed, scale=1.0)
    training = bool(case.get("training", False))
    z, attention = exact_forward(
        inputs["x"],
        weights,
        config,
        context=inputs["context"],
        key_mask=inputs["key_mask"],
        training=training,
        return_attention=True,
    )
    return {
        "spec_version": SPEC_VERSION,
        "name": case["name"],
        "description": case["description"],
        "config": config.to_dict(),
        "training": training,
        "inputs": {k: None if v is None else _tensor(v) for k, v in inputs.items()},
        "weights": {k: _tensor(v) for k, v in weights.items()},
        "expected": {"z": _tensor(z), "attention": _tensor(attention)},
    }


def render(case: dict) -> str:
    """The file text of one case: one top-level key per line, tensors on one line each."""
    lines = []
    for key, value in case.items():
        if key in ("inputs", "weights", "expected"):
            inner = ",\n".join(
                f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
                for k, v in value.items()
            )
            lines.append(f"{json.dumps(key)}: {{\n{inner}\n }}")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value)}")
    return "{\n " + ",\n ".join(lines) + "\n}\n"


def generate() -> dict[str, str]:
    """Every file of the vector set: ``{file name: text}``, deterministic.

    Example:
        >>> files = generate()
        >>> "index.json" in files and len(files) == len(CASES) + 1
        True
    """
    files = {}
    index = []
    for position, case in enumerate(CASES):
        built = build_case(case, case.get("seed", position))
        files[f"{case['name']}.json"] = render(built)
        index.append(
            {
                "name": case["name"],
                "file": f"{case['name']}.json",
                "description": case["description"],
            }
        )
    files["index.json"] = (
        json.dumps({"spec_version": SPEC_VERSION, "cases": index}, indent=1) + "\n"
    )
    return files


def _same_text(path: Path, text: str) -> bool:
    """Whether `path` is a file holding exactly `text` (an unreadable file is not)."""
    try:
        return path.is_file() and path.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Write the vector files (or, with ``--check``, compare them); returns the exit status.

    A bad ``--out`` is a usage error (exit status 2); a folder that cannot be written is
    one line on stderr and exit status 1.

    Example (the usage error on stderr: ``argument --out: '.../vectors.py' exists and is not
    a folder: expected a folder for the vector files (created if missing)``):
        >>> main(["--out", __file__])
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    parser = argparse.ArgumentParser(
        prog="python -m nonlocal_core.vectors", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out",
        type=output_folder("a folder for the vector files (created if missing)"),
        default=DEFAULT_DIR,
        help="vector directory",
    )
    parser.add_argument(
        "--check", action="store_true", help="fail if the files differ from a fresh generation"
    )
    args = parser.parse_args(argv)
    files = generate()
    if args.check:
        present = {p.name for p in args.out.glob("*.json")} if args.out.is_dir() else set()
        problems = sorted(present - set(files))
        problems += [name for name, text in files.items() if not _same_text(args.out / name, text)]
        for name in problems:
            print(f"differs or missing/stale: {args.out / name}")
        print(f"{len(files)} files checked, {len(problems)} differ")
        return 1 if problems else 0
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for stale in set(p.name for p in args.out.glob("*.json")) - set(files):
            (args.out / stale).unlink()
        for name, text in files.items():
            (args.out / name).write_text(text)
    except OSError as exc:
        print(f"python -m nonlocal_core.vectors: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(files)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
