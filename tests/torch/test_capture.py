"""`nonlocal_torch.capture_attention`: the attention of every block of a model during ordinary
forward passes, keyed by module path, without changing what the model computes, and with
every block restored on exit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nonlocal_torch import NonLocal2d, NonLocal3d, NonLocalBlock, capture_attention


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny inputs: on a busy 2-core machine a second intra-op thread only adds spin waits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        NonLocal2d(8, subsample=True),
        nn.Sequential(nn.Conv2d(8, 6, 3, stride=2, padding=1), NonLocal2d(6)),
    )
    for block in _blocks(net):  # blocks that compute something (not the identity)
        nn.init.normal_(block.norm.weight)
    return net.eval()


def _blocks(net: nn.Module) -> list[NonLocalBlock]:
    return [m for m in net.modules() if isinstance(m, NonLocalBlock)]


def _x(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(batch))


def test_maps_are_each_blocks_attention_keyed_by_path():
    net = _net()
    x = _x()
    plain = net(x)
    with capture_attention(net) as maps:
        out = net(x)
    torch.testing.assert_close(out, plain)  # the model computes what it did
    assert list(maps) == ["1", "2.1"] and dict(maps).keys() == {"1", "2.1"}
    assert maps["1"].shape == (2, 64, 16)  # N = 8 * 8, N' = 4 * 4 pooled keys
    assert maps["2.1"].shape == (2, 16, 16)
    # The same matrices as the blocks' own return_attention=True.
    features = net[0](x)
    _, want = net[1](features, return_attention=True)
    torch.testing.assert_close(maps["1"], want)
    _, want = net[2][1](net[2][0](net[1](features)), return_attention=True)
    torch.testing.assert_close(maps["2.1"], want)


def test_last_call_or_every_call():
    net = _net()
    with capture_attention(net) as last, capture_attention(net, keep="all") as every:
        net(_x(batch=2))
        net(_x(batch=3))
    # Nested captures both receive the maps.
    assert last["1"].shape[0] == 3
    assert [a.shape[0] for a in every["1"]] == [2, 3]
    torch.testing.assert_close(every["1"][-1], last["1"])
    assert "AttentionMaps({'1': (3, 64, 16)" in repr(last)


def test_maps_are_detached_and_training_still_works():
    net = _net().train()
    with capture_attention(net) as maps:
        loss = net(_x()).square().mean()
    loss.backward()
    assert not maps["1"].requires_grad and maps["1"].grad_fn is None
    assert _blocks(net)[0].norm.weight.grad is not None


def test_blocks_are_restored_on_exit_even_after_an_error():
    net = _net()
    with pytest.raises(RuntimeError, match="boom"), capture_attention(net) as maps:
        net(_x())
        raise RuntimeError("boom")
    assert maps["1"].shape == (2, 64, 16)  # readable after the context
    assert all("_attention_sink" not in vars(block) for block in _blocks(net))
    net(_x(batch=5))
    assert maps["1"].shape[0] == 2  # nothing captured after exit


def test_absent_paths_and_bad_arguments_are_named():
    net = _net()
    with capture_attention(net) as maps:
        pass
    assert maps.paths == ("1", "2.1") and len(maps) == 0
    with pytest.raises(KeyError, match=r"no attention for 'layer3': the blocks watched are"):
        maps["layer3"]
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got str"):
        with capture_attention("net"):
            pass
    with pytest.raises(ValueError, match=r"keep='first' is invalid: expected 'last'"):
        with capture_attention(net, keep="first"):
            pass
    with pytest.raises(ValueError, match=r"model \(Conv2d\) holds no NonLocalBlock"):
        with capture_attention(nn.Conv2d(2, 2, 1)):
            pass


def test_compiled_models_capture_and_exports_ignore_the_capture():
    block = NonLocal3d(4, subsample=True).eval()
    x = torch.randn(1, 4, 2, 4, 4)
    with capture_attention(block) as want:
        block(x)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    with capture_attention(block) as maps:
        compiled(x)
    torch.testing.assert_close(maps[""], want[""])
    torch.testing.assert_close(compiled(x), x)  # outside the capture, as before
    plain = torch.export.export(block, (x,))
    with capture_attention(block) as maps:
        captured = torch.export.export(block, (x,))
    assert len(maps) == 0  # an exported program holds no Python side effects ...

    def calls(program):
        return sorted(str(n.target) for n in program.graph.nodes if n.op == "call_function")

    # ... and is the one exported without a capture (its linear strategy, not the matrix).
    assert calls(captured) == calls(plain)
    assert any("scaled_dot_product" in name for name in calls(captured)), calls(captured)


def test_docstring_examples():
    import doctest

    import nonlocal_torch.attention

    result = doctest.testmod(nonlocal_torch.attention, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
