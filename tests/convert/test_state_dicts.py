"""Edge cases of reading one block or a whole network: wrappers, copies, exact shapes and
error messages that name the checkpoint's own keys."""

from __future__ import annotations

import numpy as np
import pytest

from nonlocal_core import profile, random_weights
from nonlocal_core.convert import CheckpointError, find_blocks, from_state_dict, to_state_dict

SLOWFAST = profile("slowfast", dim=8, dim_inner=4)


def _state(prefix="s3.pathway0_nonlocal1."):
    return to_state_dict(random_weights(SLOWFAST, seed=0), "slowfast", SLOWFAST, prefix=prefix)


def test_checkpoint_wrappers_are_looked_into():
    state = _state()
    assert [b.prefix for b in find_blocks({"epoch": 3, "model_state": state}, "slowfast")] == [
        "s3.pathway0_nonlocal1"
    ]
    wrapped = from_state_dict({"state_dict": state, "meta": {"epoch": 1}}, "slowfast", SLOWFAST)
    assert sorted(wrapped) == sorted(random_weights(SLOWFAST))
    with pytest.raises(CheckpointError, match="no state dict found"):
        find_blocks({"epoch": 3, "cfg": "text"}, "slowfast")


def test_weights_are_copies_of_the_checkpoint():
    torch = pytest.importorskip("torch")
    state = _state(prefix="")
    tensors = {key: torch.from_numpy(value) for key, value in state.items()}
    for source in (state, tensors):
        weights = from_state_dict(source, "slowfast", SLOWFAST)
        weights["g.weight"][:] = 7.0
        assert not np.any(np.asarray(source["conv_g.weight"]) == 7.0)
    bf16 = {key: value.to(torch.bfloat16) if value.is_floating_point() else value
            for key, value in tensors.items()}  # fmt: skip
    weights = from_state_dict(bf16, "slowfast", SLOWFAST)
    assert weights["g.weight"].dtype == np.float32
    np.testing.assert_array_equal(
        weights["g.weight"], bf16["conv_g.weight"].float().numpy().reshape(4, 8)
    )


def test_a_source_kernel_must_have_the_sources_rank():
    state = _state(prefix="")
    state["conv_phi.weight"] = state["conv_phi.weight"].reshape(4, 8, 1, 1)  # a 2-D kernel
    with pytest.raises(CheckpointError, match=r"'conv_phi.weight' has shape \(4, 8, 1, 1\), "
                       r"expected \(4, 8, 1, 1, 1\)"):  # fmt: skip
        from_state_dict(state, "slowfast", SLOWFAST)
    # The canonical layout takes kernels of any rank: they are the same matrix.
    canonical = to_state_dict(random_weights(SLOWFAST), "paper", SLOWFAST)
    canonical["phi.weight"] = canonical["phi.weight"].reshape(4, 8, 1, 1, 1)
    assert from_state_dict(canonical, "paper", SLOWFAST)["phi.weight"].shape == (4, 8)


def test_find_blocks_errors_name_the_checkpoints_keys():
    state = {**_state(), **_state("s4.pathway0_nonlocal0.")}
    del state["s4.pathway0_nonlocal0.conv_theta.bias"]
    with pytest.raises(CheckpointError, match=r"'s4.pathway0_nonlocal0.conv_theta.bias'"):
        find_blocks(state, "slowfast")
