"""Reloading and exporting models that hold a NonLocalBlock.

* ``.keras`` files reload in a fresh interpreter (the process that loads is not the one that
  saved: the class must be found from what the file says).
* ``model.export(path)`` (TensorFlow SavedModel, TensorFlow and JAX backends) reloads with
  ``tf.saved_model.load`` / ``keras.layers.TFSMLayer`` without this package, and runs at
  batch sizes and spatial extents other than the one the model was called on.
* ``model.export(path, format="onnx")`` runs in onnxruntime: tf2onnx on TensorFlow, jax2onnx
  on JAX, ``torch.onnx`` on PyTorch, with the shape limits of each documented in
  ``docs/export.md`` and pinned here.

Every artifact is compared with the Keras model that produced it, for each instantiation,
with and without subsampling. Run once per backend (``KERAS_BACKEND=... pytest tests/keras``);
tests for another backend's exporter skip.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

import nonlocal_core
import nonlocal_keras
from nonlocal_core import INSTANTIATIONS, NonLocalConfig
from nonlocal_keras import NonLocalBlock

from .conftest import BACKEND, loaded_block, to_numpy

CHANNELS = 8
# (batch, height, width), neither the (1, 6, 6) the models are first called on; odd
# extents check that pooling drops the remainder in the exported graph as in Keras. Few:
# eager JAX compiles every operation anew for each shape (seconds per model and size).
SIZES = ((3, 4, 6), (1, 5, 7))
# Where an exporter needs static spatial extents (only the batch stays dynamic).
STATIC_EXTENT = (6, 6)
STATIC_SIZES = ((1, *STATIC_EXTENT), (3, *STATIC_EXTENT))
CASES = [(inst, pooled) for inst in INSTANTIATIONS for pooled in (False, True)]
# float32 through another runtime (XLA, onnxruntime): a few ulp of outputs of order 1.
TOL = {"rtol": 1e-5, "atol": 1e-5}
KERAS_VERSION = tuple(int(part) for part in keras.__version__.split(".")[:2])


def _ids(value) -> str:
    """Test ids such as ``dot_product-pooled``."""
    if isinstance(value, bool):
        return "pooled" if value else "full"
    return str(value)


def _model(instantiation: str, pooled: bool) -> keras.Model:
    """A Functional model around a block with random (non-identity) weights, built for
    unknown batch and spatial extents, and called once (Keras's ONNX export requires it)."""
    cfg = NonLocalConfig(
        CHANNELS,
        spatial_dims=2,
        instantiation=instantiation,
        subsample=pooled,
        data_format="channels_last",
    )
    block, _ = loaded_block(cfg, seed=3)
    inputs = keras.Input((None, None, CHANNELS), name="x")
    model = keras.Model(inputs, block(inputs))
    model(np.zeros((1, *STATIC_EXTENT, CHANNELS), "float32"))
    return model


def _name(x) -> str:
    """An input's key in `_inputs` and in the fresh process's files: ``x_B_H_W``."""
    return "x_{}_{}_{}".format(*x.shape[:-1])


def _inputs(sizes) -> dict[str, np.ndarray]:
    """One random input per (batch, height, width), keyed by `_name`."""
    rng = np.random.default_rng(7)
    inputs = [rng.normal(size=(*size, CHANNELS)).astype("float32") for size in sizes]
    return {_name(x): x for x in inputs}


def _check_against_keras(model: keras.Model, run, sizes) -> None:
    """`run(x)` (an exported artifact) matches the Keras model at every size."""
    for name, x in _inputs(sizes).items():
        got = np.asarray(run(x))
        assert got.shape == x.shape, name
        np.testing.assert_allclose(got, to_numpy(model(x)), **TOL, err_msg=name)


# .keras files ------------------------------------------------------------------------------


def test_saved_config_names_an_importable_module_and_a_registered_name():
    """What `keras.models.load_model` resolves the class from.

    Keras looks ``registered_name`` up in its registry of imported classes first; Keras <= 3.8
    then imports ``module`` and takes ``class_name`` from it (3.9+ does so only for Keras's
    own packages). Both must lead to `NonLocalBlock`.
    """
    saved = keras.saving.serialize_keras_object(NonLocalBlock(CHANNELS, spatial_dims=2))
    assert saved["registered_name"] == "nonlocal_keras>NonLocalBlock"
    assert keras.saving.get_registered_object(saved["registered_name"]) is NonLocalBlock
    module = importlib.import_module(saved["module"])
    assert getattr(module, saved["class_name"]) is NonLocalBlock


_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras

    keras_file, inputs_file, outputs_file, saved_model_dir = sys.argv[1:]
    inputs = dict(np.load(inputs_file))
    outputs = {}
    if saved_model_dir:  # a SavedModel needs none of this project's code
        import tensorflow as tf

        served = tf.saved_model.load(saved_model_dir)
        for name, x in inputs.items():
            outputs["saved_model/" + name] = served.serve(x).numpy()
    report = {"imported_first": "nonlocal_keras" in sys.modules}
    try:
        keras.models.load_model(keras_file)
        report["plain_load"] = "loaded"
    except Exception as exc:
        report["plain_load"] = f"{type(exc).__name__}: {exc}"
    import nonlocal_keras  # registers NonLocalBlock with Keras

    model = keras.models.load_model(keras_file)
    report["block"] = type(model.layers[1]).__module__ + "." + type(model.layers[1]).__name__
    name, x = next(iter(inputs.items()))
    outputs["keras/" + name] = keras.ops.convert_to_numpy(model(x))
    np.savez(outputs_file, **outputs)
    print(json.dumps(report))
    """
)


def _child_env() -> dict[str, str]:
    """This process's environment, same backend, with this checkout's packages importable
    whether or not the project is installed."""
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="2")
    roots = {
        str(Path(nonlocal_keras.__file__).parents[1]),
        str(Path(nonlocal_core.__file__).parents[1]),
    }
    env["PYTHONPATH"] = os.pathsep.join([*sorted(roots), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    return env


def test_keras_file_loads_in_a_fresh_process(tmp_path):
    """A ``.keras`` file reloads in a new interpreter once ``nonlocal_keras`` is imported,
    with the same outputs; without the import, Keras 3.9+ stops with an error that names the
    class, its module and its registered name (the limitation docs/export.md explains).
    On TensorFlow the child also serves the exported SavedModel before importing anything
    of this project."""
    model = _model("embedded_gaussian", pooled=True)
    keras_file = tmp_path / "model.keras"
    model.save(keras_file)
    # The reloaded Keras model at the size the model was first called at (loading does not
    # depend on it, and on JAX each new shape compiles for seconds); the SavedModel at all.
    # (`_inputs(SIZES)` is what `_check_against_keras` draws.)
    inputs = {**_inputs([(1, *STATIC_EXTENT)]), **_inputs(SIZES)}
    np.savez(tmp_path / "inputs.npz", **inputs)
    saved_model_dir = ""
    if BACKEND == "tensorflow":
        saved_model_dir = str(tmp_path / "saved_model")
        model.export(saved_model_dir, verbose=False)
    (tmp_path / "child.py").write_text(_CHILD)

    result = subprocess.run(
        [
            sys.executable,
            str(tmp_path / "child.py"),
            str(keras_file),
            str(tmp_path / "inputs.npz"),
            str(tmp_path / "outputs.npz"),
            saved_model_dir,
        ],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["imported_first"] is False
    assert report["block"] == "nonlocal_keras.layer.NonLocalBlock"
    plain = report["plain_load"]
    if KERAS_VERSION < (3, 9):  # these import the saved "module" themselves
        assert plain == "loaded"
    elif plain != "loaded":  # the message must say what to import
        assert plain.startswith("TypeError"), plain
        for part in (
            "Could not locate class 'NonLocalBlock'",
            "'module': 'nonlocal_keras.layer'",
            "'registered_name': 'nonlocal_keras>NonLocalBlock'",
        ):
            assert part in plain, plain

    outputs = np.load(tmp_path / "outputs.npz")
    name, x = next(iter(inputs.items()))
    np.testing.assert_array_equal(outputs["keras/" + name], to_numpy(model(x)))
    if saved_model_dir:
        _check_against_keras(model, lambda x: outputs["saved_model/" + _name(x)], SIZES)


# TensorFlow SavedModel ---------------------------------------------------------------------


# On JAX (through jax2tf, with symbolic batch and extents) two pooled cases only: pooling is
# what symbolic extents stress (softmax and dot_product's 1/N' normalisation take the rest),
# and eager JAX makes each case cost seconds.
SAVED_MODEL_CASES = (
    CASES if BACKEND != "jax" else [("embedded_gaussian", True), ("dot_product", True)]
)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """The cases exported once each as a SavedModel (slow), shared by the tests below."""
    if BACKEND not in ("tensorflow", "jax"):
        pytest.skip(f"SavedModel export runs on the TensorFlow and JAX backends, not {BACKEND}")
    pytest.importorskip("tensorflow")  # the JAX backend exports through jax2tf
    root = tmp_path_factory.mktemp("saved_models")
    exported = {}
    for instantiation, pooled in SAVED_MODEL_CASES:
        model = _model(instantiation, pooled)
        path = root / f"{instantiation}_{pooled}"
        model.export(path, verbose=False)  # format="tf_saved_model"; on JAX through jax2tf
        exported[instantiation, pooled] = model, str(path)
    return exported


@pytest.mark.parametrize(("instantiation", "pooled"), SAVED_MODEL_CASES, ids=_ids)
def test_saved_model_runs_at_new_sizes(saved_models, instantiation, pooled):
    import tensorflow as tf

    model, path = saved_models[instantiation, pooled]
    served = tf.saved_model.load(path)
    _check_against_keras(model, lambda x: served.serve(x).numpy(), SIZES)


def test_saved_model_reloads_as_a_tfsm_layer(saved_models):
    if BACKEND != "tensorflow":
        pytest.skip("keras.layers.TFSMLayer runs on the TensorFlow backend only")
    model, path = saved_models["concatenation", True]
    layer = keras.layers.TFSMLayer(path, call_endpoint="serve")
    inputs = keras.Input((None, None, CHANNELS))
    wrapped = keras.Model(inputs, layer(inputs))
    _check_against_keras(model, lambda x: to_numpy(wrapped(x)), SIZES)


# ONNX --------------------------------------------------------------------------------------


def _export_onnx(model: keras.Model, path: Path, pooled: bool):
    """Export `model` to ONNX the way this backend supports; return the sizes to check.

    * TensorFlow (tf2onnx): batch and spatial extents stay dynamic.
    * JAX (jax2onnx 0.17): spatial extents must be static; with symbolic ones its reshape
      lowering fails ("reshape with symbolic dimensions requires mapping to input axes").
    * PyTorch: Keras traces with every unknown dimension set to 1, which a pooled block
      rejects (a 1x1 grid is smaller than the 2x2 window): pooled blocks get static spatial
      extents through ``input_signature``; unpooled ones stay fully dynamic.
    """
    static = BACKEND == "jax" or (BACKEND == "torch" and pooled)
    signature = None
    if static:
        spec = keras.InputSpec(shape=(None, *STATIC_EXTENT, CHANNELS), dtype="float32")
        signature = [spec]
    model.export(str(path), format="onnx", verbose=False, input_signature=signature)
    return STATIC_SIZES if static else SIZES


@pytest.mark.filterwarnings("ignore::FutureWarning")  # Keras's tf2onnx patch probes np.object
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's TorchScript exporter
@pytest.mark.parametrize(("instantiation", "pooled"), CASES, ids=_ids)
def test_onnx_export_runs_in_onnxruntime(tmp_path, instantiation, pooled):
    ort = pytest.importorskip("onnxruntime")
    # Keras on PyTorch uses torch.onnx's TorchScript exporter here (dynamic axes).
    exporter = {"tensorflow": "tf2onnx", "jax": "jax2onnx", "torch": "torch.onnx"}.get(BACKEND)
    if exporter is None:
        pytest.skip(f"Keras has no ONNX export on the {BACKEND} backend")
    pytest.importorskip(exporter)
    model = _model(instantiation, pooled)
    path = tmp_path / "model.onnx"
    sizes = _export_onnx(model, path, pooled)
    session = ort.InferenceSession(str(path))
    name = session.get_inputs()[0].name
    _check_against_keras(model, lambda x: session.run(None, {name: x})[0], sizes)


def _torch_onnx_export(model: keras.Model, path: Path, *, dynamo: bool) -> None:
    """``torch.onnx.export`` of `model` with dynamic batch and extents, traced at
    (2, 6, 6): a size the 2x2 subsample windows fit, unlike Keras's all-ones sample."""
    import torch

    sample = (torch.zeros(2, *STATIC_EXTENT, CHANNELS),)
    model.eval()  # as Keras's export does (the block reads `training`, not torch's mode)
    if not dynamo:  # the TorchScript exporter, as Keras's own export uses for dynamic axes
        torch.onnx.export(
            model,
            sample,
            str(path),
            input_names=["x"],
            dynamic_axes={"x": {0: "batch", 1: "height", 2: "width"}},
            dynamo=False,
        )
        return
    # Keras's Model.forward takes *args: the spec of x sits inside the args tuple. Extents
    # start at 2, the subsample window (the layer rejects smaller grids).
    dims = {
        0: torch.export.Dim("batch"),
        1: torch.export.Dim("height", min=2),
        2: torch.export.Dim("width", min=2),
    }
    program = torch.onnx.export(
        model, sample, input_names=["x"], dynamic_shapes=((dims,),), dynamo=True, verbose=False
    )
    program.save(str(path))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's
@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_torch_onnx_export_of_a_pooled_block_with_dynamic_extents(tmp_path, instantiation):
    """On PyTorch a pooled block keeps dynamic batch and extents when ``torch.onnx.export``
    is called directly with a sample its windows fit (the recipe in docs/export.md)."""
    if BACKEND != "torch":
        pytest.skip("torch.onnx.export traces the PyTorch backend only")
    ort = pytest.importorskip("onnxruntime")
    model = _model(instantiation, pooled=True)
    path = tmp_path / "model.onnx"
    _torch_onnx_export(model, path, dynamo=False)
    session = ort.InferenceSession(str(path))
    _check_against_keras(model, lambda x: session.run(None, {"x": x})[0], SIZES)


def test_torch_dynamo_onnx_export_keeps_the_key_count_dynamic(tmp_path):
    """The torch.export-based exporter (``dynamo=True``, PyTorch's default) with dynamic
    extents keeps the key count N' symbolic: the dot product is right at every size."""
    if BACKEND != "torch":
        pytest.skip("torch.onnx.export traces the PyTorch backend only")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _model("dot_product", pooled=True)
    path = tmp_path / "model.onnx"
    _torch_onnx_export(model, path, dynamo=True)
    session = ort.InferenceSession(str(path))
    _check_against_keras(model, lambda x: session.run(None, {"x": x})[0], SIZES)
