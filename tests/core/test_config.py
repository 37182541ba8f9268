"""NonLocalConfig: defaults, normalisation, serialisation and every validation error."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from nonlocal_core import ConfigError, NonLocalConfig


def test_defaults_follow_the_spec():
    cfg = NonLocalConfig(64)
    assert cfg.spatial_dims == 2
    assert cfg.instantiation == "embedded_gaussian"
    assert cfg.inter_channels == 32 and cfg.context_channels == 64
    assert cfg.logit_scale is None and cfg.scale == pytest.approx(1 / math.sqrt(32))
    assert cfg.subsample is None and cfg.pool_position == "after_projection"
    assert cfg.norm == "batch" and cfg.norm_eps == 1e-5 and cfg.residual is True
    assert cfg.data_format == "channels_first"


@pytest.mark.parametrize("c, expected", [(1, 1), (2, 1), (3, 1), (7, 3), (1024, 512)])
def test_inter_channels_default_is_half_at_least_one(c, expected):
    assert NonLocalConfig(c).inter_channels == expected


@pytest.mark.parametrize("dims, expected", [(1, (2,)), (2, (2, 2)), (3, (1, 2, 2))])
def test_subsample_true_means_the_paper_windows(dims, expected):
    # spec: POOL-1
    assert NonLocalConfig(4, spatial_dims=dims, subsample=True).subsample == expected


def test_subsample_int_and_sequence_forms():
    assert NonLocalConfig(4, spatial_dims=3, subsample=2).subsample == (2, 2, 2)
    assert NonLocalConfig(4, spatial_dims=2, subsample=[3, 1]).subsample == (3, 1)
    assert NonLocalConfig(4, subsample=False).subsample is None
    assert NonLocalConfig(4, subsample=None).subsample is None


def test_logit_scale_forms():
    # spec: INST-3
    assert NonLocalConfig(8, instantiation="gaussian").scale == pytest.approx(8**-0.5)
    assert NonLocalConfig(8, inter_channels=2).scale == pytest.approx(2**-0.5)
    assert NonLocalConfig(8, logit_scale=False).scale == 1.0
    assert NonLocalConfig(8, logit_scale=True) == NonLocalConfig(8)
    assert NonLocalConfig(8, logit_scale="auto") == NonLocalConfig(8)
    assert NonLocalConfig(8, logit_scale=0.25).scale == 0.25
    assert NonLocalConfig(8, instantiation="dot_product").scale is None


def test_to_dict_is_json_safe_and_round_trips():
    cfg = NonLocalConfig(
        6, spatial_dims=3, subsample=True, context_channels=5, logit_scale=0.5, norm=None
    )
    data = json.loads(json.dumps(cfg.to_dict()))
    assert NonLocalConfig.from_dict(data) == cfg
    assert data["subsample"] == [1, 2, 2]


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['heads'\]"):
        NonLocalConfig.from_dict({"in_channels": 4, "heads": 2})


def test_config_is_frozen_and_hashable():
    cfg = NonLocalConfig(4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.in_channels = 5  # type: ignore[misc]
    assert hash(cfg) == hash(NonLocalConfig(4, inter_channels=2))


def test_replace_revalidates():
    assert NonLocalConfig(4).replace(instantiation="dot_product").scale is None
    with pytest.raises(ConfigError, match="norm_eps"):
        NonLocalConfig(4).replace(norm_eps=0)


def test_pooled_extent_floors():
    cfg = NonLocalConfig(4, spatial_dims=3, subsample=(1, 2, 3))
    assert cfg.pooled_extent((5, 5, 8)) == (5, 2, 2)


BAD = [
    ({"in_channels": 0}, "in_channels", "integer >= 1"),
    ({"in_channels": 2.0}, "in_channels", "integer >= 1"),
    ({"in_channels": True}, "in_channels", "integer >= 1"),
    ({"spatial_dims": 4}, "spatial_dims", "1, 2 or 3"),
    ({"instantiation": "softmax"}, "instantiation", "one of"),
    ({"inter_channels": 0}, "inter_channels", "integer >= 1"),
    ({"context_channels": -1}, "context_channels", "integer >= 1"),
    ({"instantiation": "gaussian", "context_channels": 3}, "context_channels", "in_channels"),
    ({"instantiation": "dot_product", "logit_scale": 0.5}, "logit_scale", "no softmax"),
    ({"instantiation": "concatenation", "logit_scale": False}, "logit_scale", "no softmax"),
    ({"logit_scale": 0.0}, "logit_scale", "float > 0"),
    ({"logit_scale": -1.0}, "logit_scale", "float > 0"),
    ({"logit_scale": float("inf")}, "logit_scale", "float > 0"),
    ({"logit_scale": "sqrt"}, "logit_scale", "float > 0"),
    ({"subsample": (2,)}, "subsample", "2 integers"),
    ({"subsample": 0}, "subsample", "integer >= 1"),
    ({"subsample": (2, 0)}, "subsample", "integer >= 1"),
    ({"subsample": "2"}, "subsample", "integer >= 1"),
    ({"pool_position": "before"}, "pool_position", "one of"),
    ({"norm": "layer"}, "norm", "'batch' or None"),
    ({"norm_eps": 0.0}, "norm_eps", "float > 0"),
    ({"norm_eps": float("nan")}, "norm_eps", "float > 0"),
    ({"residual": 1}, "residual", "True or False"),
    ({"data_format": "NCHW"}, "data_format", "one of"),
]


@pytest.mark.parametrize("fields, field, expected", BAD)
def test_invalid_field_names_field_value_and_what_is_allowed(fields, field, expected):
    # spec: CFG-1 INST-1 INST-3
    fields = {"in_channels": 4, **fields}
    with pytest.raises(ConfigError) as info:
        NonLocalConfig(**fields)
    message = str(info.value)
    assert f"NonLocalConfig.{field}={fields[field]!r}" in message
    assert expected in message
