"""`nonlocal_torch.insert_nonlocal` on ResNets with torchvision's names (a real ResNet-50 and
a small 3-D video ResNet, see `resnets`): the paper's recipes and explicit paths put blocks of
the right width in the right places, leave the outputs and the original state_dict keys
unchanged, and the result trains, compiles, traces and copies like the original."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nonlocal_torch import NonLocalBlock, capture_attention, insert_nonlocal
from nonlocal_torch.insert import BLOCK_NAME, recipe_paths
from tests.torch.resnets import resnet

RECIPE_PATHS = {
    "wang2018-1": ["layer3.4"],
    "wang2018-5": ["layer2.1", "layer2.3", "layer3.1", "layer3.3", "layer3.5"],
    "wang2018-10": [f"layer2.{i}" for i in range(4)] + [f"layer3.{i}" for i in range(6)],
}
# ResNet-50's output widths: res3 (layer2) 512, res4 (layer3) 1024.
WIDTHS = {"layer2": 512, "layer3": 1024}


@pytest.fixture(autouse=True)
def one_thread():
    # These inputs are small: with other jobs on a 2-core CI machine, a second intra-op
    # thread makes a ResNet-50 forward pass 30 times slower (spin waits), not faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blocks(model: nn.Module) -> dict[str, NonLocalBlock]:
    return {path: m for path, m in model.named_modules() if isinstance(m, NonLocalBlock)}


def _video_resnet(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return resnet(width=8, num_classes=5, spatial_dims=3, **kwargs)


@pytest.fixture(scope="module")
def resnet50_input():
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("recipe", sorted(RECIPE_PATHS))
def test_recipes_on_resnet50(recipe, resnet50_input):
    torch.manual_seed(0)
    model = resnet(num_classes=10).eval()
    before = model(resnet50_input)
    original_state = model.state_dict()

    assert insert_nonlocal(model, recipe, subsample=True) is model
    blocks = _blocks(model)
    assert list(blocks) == [f"{path}.{BLOCK_NAME}" for path in RECIPE_PATHS[recipe]]
    for path, block in blocks.items():
        assert block.config.in_channels == WIDTHS[path.split(".")[0]]
        assert block.config.spatial_dims == 2 and block.config.subsample == (2, 2)
        assert not block.training  # the model's mode
    assert torch.equal(model(resnet50_input), before)  # the identity at insertion

    # Every original key keeps its name and value; new keys are PATH.nonlocal_block.*.
    state = model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in original_state.items())
    new_keys = {f"{path}.{key}" for path, block in blocks.items() for key in block.state_dict()}
    assert set(state) - set(original_state) == new_keys


def test_recipe_paths_follow_the_depth():
    # wang2018-1 is "before the last residual block of res4" at any depth.
    model = resnet(layers=(1, 4, 9, 1), width=4)
    assert recipe_paths(model, "wang2018-1") == ["layer3.7"]
    assert recipe_paths(model, "wang2018-5") == RECIPE_PATHS["wang2018-5"]


def test_video_resnet_paths_train_and_load_pretrained_weights():
    model = _video_resnet()
    pretrained = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    before = model.eval()(x)

    insert_nonlocal(model, ["layer2.1", "layer3.3", "layer4"], instantiation="dot_product")
    blocks = _blocks(model)
    assert {path: b.config.in_channels for path, b in blocks.items()} == {
        "layer2.1.nonlocal_block": 64,
        "layer3.3.nonlocal_block": 128,
        "layer4.nonlocal_block": 256,  # after a whole stage: its last child
    }
    assert all(b.config.spatial_dims == 3 for b in blocks.values())
    assert torch.equal(model(x), before)

    # Pretrained weights of the original network still load: only the blocks are missing.
    fresh = _video_resnet()
    insert_nonlocal(fresh, ["layer2.1", "layer3.3", "layer4"], instantiation="dot_product")
    missing, unexpected = fresh.load_state_dict(pretrained, strict=False)
    # (BN fills in a missing num_batches_tracked itself, so it is not reported.)
    assert unexpected == [] and set(missing) == {
        key
        for key in fresh.state_dict()
        if f".{BLOCK_NAME}." in key and not key.endswith("num_batches_tracked")
    }

    # One SGD step moves the blocks' BN gamma and beta (W_z gets its gradient through
    # gamma, zero at first); the second moves W_z too.
    model.train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    target = torch.tensor([0, 3])
    initial = {p: (b.norm.weight.clone(), b.out.weight.clone()) for p, b in blocks.items()}
    for step in range(2):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), target).backward()
        optimiser.step()
        for path, block in blocks.items():
            gamma, w_z = initial[path]
            assert not torch.equal(block.norm.weight, gamma), (step, path)
            assert step == 0 or not torch.equal(block.out.weight, w_z), path


def test_each_block_runs_once_per_forward():
    # A hook on a residual block, the last child of a Sequential stage: one call each.
    model = _video_resnet(layers=(1, 2, 2, 1)).eval()
    insert_nonlocal(model, ["layer2.1", "layer3"])
    with capture_attention(model, keep="all") as maps:
        model(torch.randn(1, 3, 2, 32, 32))
    assert {path: len(calls) for path, calls in maps.items()} == {
        "layer2.1.nonlocal_block": 1,
        "layer3.nonlocal_block": 1,
    }


def test_compile_trace_and_copy_match_eager():
    torch.manual_seed(0)
    model = resnet(layers=(1, 2, 2, 1), width=4, num_classes=3)
    insert_nonlocal(model, ["layer2.1", "layer3"], subsample=True)
    for block in _blocks(model).values():  # blocks that compute something
        nn.init.normal_(block.norm.weight)
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    eager = model(x)
    # fullgraph: the hooks and blocks trace without graph breaks. (Inductor's code generation
    # of the block itself is tested in test_export.py; here it would only add minutes.)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), eager, rtol=1e-5, atol=1e-6)
    assert torch.allclose(torch.fx.symbolic_trace(model)(x), eager, rtol=1e-5, atol=1e-6)
    assert torch.equal(copy.deepcopy(model)(x), eager)


def test_blocks_take_the_models_dtype():
    model = resnet(layers=(1, 2, 1, 1), width=4).double()
    insert_nonlocal(model, ["layer2.1"])
    block = model.get_submodule("layer2.1.nonlocal_block")
    assert block.g.weight.dtype == torch.float64


def test_widths_can_be_given_where_they_cannot_be_read():
    model = nn.Sequential(nn.Conv1d(2, 6, 1), nn.ReLU())
    with pytest.raises(ValueError, match=r"at\[0\]='1' \(ReLU\) holds no convolution .*"):
        insert_nonlocal(model, ["1"])
    insert_nonlocal(model, ["1"], in_channels=6, spatial_dims=1)
    x = torch.randn(2, 2, 5)
    assert torch.equal(model(x), torch.relu(model[0](x)))


def _small_resnet() -> nn.Module:
    return resnet(layers=(1, 2, 2, 1), width=4)


ERRORS = [
    ("layer9", ValueError, r"at\[0\]='layer9' names no module: the model \(ResNet\) has no "),
    ("layer3.7", ValueError, r"module 'layer3' \(Sequential\) has no child '7'; its children "),
    ("layer3.1.conv1.weight", ValueError, r"names a parameter of module 'layer3.1.conv1'"),
    ("layer3.1.bn1.running_mean", ValueError, r"names a buffer of"),
    (3, TypeError, r"at\[0\]=3 is invalid: expected a module path \(str\)"),
]


@pytest.mark.parametrize(("path", "error", "match"), ERRORS)
def test_bad_paths_are_named(path, error, match):
    with pytest.raises(error, match=match):
        insert_nonlocal(_small_resnet(), [path])


@pytest.mark.parametrize(
    ("at", "error", "match"),
    [
        ("wang2018-5", ValueError, r"at='wang2018-5' puts a block after layer2.3, but the "),
        ("wang2018-10", ValueError, r"layer2 has 2 residual blocks \('0', '1'\)"),
        ("layer3.1", ValueError, r"at='layer3.1' is not a recipe: .* \(at=\['layer3.1'\] for"),
        ([], TypeError, r"at=\[\] is invalid: expected a recipe name"),
        (None, TypeError, r"at=None is invalid"),
        (["layer2.1", "layer2.1"], ValueError, r"at\[1\]='layer2.1' is a duplicate"),
    ],
)
def test_bad_at_is_named(at, error, match):
    model = _small_resnet()
    keys = list(model.state_dict())
    with pytest.raises(error, match=match):
        insert_nonlocal(model, at)
    assert list(model.state_dict()) == keys  # nothing changed


def test_a_failing_call_changes_nothing():
    model = _small_resnet()
    keys = list(model.state_dict())
    with pytest.raises(ValueError, match=r"at\[1\]='layer9'"):
        insert_nonlocal(model, ["layer2.1", "layer9"])
    with pytest.raises(ValueError, match="instantiation"):
        insert_nonlocal(model, ["layer2.1"], instantiation="softmax")
    assert list(model.state_dict()) == keys
    assert not model.layer2[1]._forward_hooks


def test_recipes_need_torchvision_naming():
    model = nn.Sequential(nn.Conv2d(3, 4, 1))
    with pytest.raises(ValueError, match=r"at='wang2018-1' needs a module 'layer3' .*'0'"):
        insert_nonlocal(model, "wang2018-1")


def test_inserting_twice_and_into_blocks_is_refused():
    model = _small_resnet()
    insert_nonlocal(model, ["layer2.1", "layer3"])
    with pytest.raises(ValueError, match=r"already has a non-local block .*applied twice"):
        insert_nonlocal(model, ["layer2.1"])
    with pytest.raises(
        ValueError, match=r"'layer3' already has a non-local block \('layer3.nonlocal_block'\)"
    ):
        insert_nonlocal(model, ["layer3"])
    with pytest.raises(ValueError, match=r"is a non-local block"):
        insert_nonlocal(model, ["layer2.1.nonlocal_block"])
    with pytest.raises(ValueError, match=r"is inside the non-local block"):
        insert_nonlocal(model, ["layer2.1.nonlocal_block.g"])
    # The recipe's stage counts skip the block appended to layer3.
    assert recipe_paths(model, "wang2018-1") == ["layer3.0"]


def test_one_module_under_two_paths_is_refused():
    model = _small_resnet()
    model.alias = model.layer2  # the same stage, registered twice
    with pytest.raises(ValueError, match=r"at\[1\]='alias.1' is the module 'layer2.1' under"):
        insert_nonlocal(model, ["layer2.1", "alias.1"])
    short = resnet(layers=(1, 1, 1, 1), width=4)
    with pytest.raises(ValueError, match=r"the model's layer3 has 1: expected at least 2"):
        insert_nonlocal(short, "wang2018-1")


def test_other_refusals():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got dict"):
        insert_nonlocal({}, ["a"])
    holder = nn.Module()
    holder.items = nn.ModuleList([nn.Conv2d(2, 2, 1)])
    with pytest.raises(ValueError, match=r"at\[0\]='items' is a ModuleList, which is never"):
        insert_nonlocal(holder, ["items"])


def test_docstring_examples():
    import doctest

    import nonlocal_torch.insert

    result = doctest.testmod(nonlocal_torch.insert, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
