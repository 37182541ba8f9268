"""The published formulations compute our block's function, and the side-by-side runs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from nonlocal_core import random_weights
from nonlocal_torch import NonLocalBlock, bench, formulations, sidebyside
from nonlocal_torch.bench import Case
from nonlocal_torch.formulations import FORMULATIONS, applicable, pairwise_bytes

EXTENTS = {1: (7,), 2: (5, 6), 3: (3, 4, 5)}
AFTER, BEFORE = formulations.AFTER, formulations.BEFORE


def _block(instantiation, dims, subsample, position, seed=1, **kwargs):
    block = NonLocalBlock(
        6,
        spatial_dims=dims,
        instantiation=instantiation,
        subsample=subsample,
        pool_position=position,
        dtype=torch.float64,
        **kwargs,
    )
    block.load_canonical_weights(random_weights(block.config, seed=seed))
    return block


def _matching_blocks():
    """(formulation, dims, subsample, pool position): every instantiation a formulation
    claims to compute, 1D to 3D, pooled or not, on each pool position it accepts."""
    out = []
    for name, spec in FORMULATIONS.items():
        positions = (spec.pool_position,) if spec.pool_position else (AFTER, BEFORE)
        for dims in (1, 2, 3):
            for subsample in (False, True):
                for position in positions if subsample else (AFTER,):
                    out.append(
                        pytest.param(
                            name,
                            dims,
                            subsample,
                            position,
                            id=f"{name}-{dims}d-"
                            f"{'pool-' + position.split('_')[0] if subsample else 'full'}",
                        )
                    )
    return out


@pytest.mark.parametrize(("name", "dims", "subsample", "position"), _matching_blocks())
def test_formulation_is_our_block(name, dims, subsample, position):
    """Same weights, float64: same output (eval and training BN) and same gradients."""
    spec = FORMULATIONS[name]
    block = _block(spec.instantiation, dims, subsample, position)
    assert name in applicable(block)
    x = torch.randn(2, 6, *EXTENTS[dims], dtype=torch.float64, requires_grad=True)
    for training in (False, True):
        block.train(training)
        z_ours = block(x)
        z_theirs = spec.forward(block, x)
        torch.testing.assert_close(z_theirs, z_ours)
        # Gradients of a random linear functional, for x and every parameter.
        probe = torch.randn_like(z_ours)
        params = [x, *block.parameters()]
        grads_ours = torch.autograd.grad((z_ours * probe).sum(), params)
        grads_theirs = torch.autograd.grad((z_theirs * probe).sum(), params)
        for ours, theirs in zip(grads_ours, grads_theirs, strict=True):
            torch.testing.assert_close(theirs, ours)


def test_formulations_are_far_from_the_identity():
    """The comparison above means something: the block's output is not x (random weights)."""
    block = _block("embedded_gaussian", 2, True, AFTER).eval()
    x = torch.randn(2, 6, 5, 6, dtype=torch.float64)
    assert (block(x) - x).abs().max() > 0.1


def test_formulations_refuse_blocks_they_would_not_match():
    x2 = torch.randn(1, 6, 4, 4, dtype=torch.float64)
    before = _block("embedded_gaussian", 2, True, BEFORE)
    after = _block("embedded_gaussian", 2, True, AFTER)
    assert applicable(before) == ["slowfast_embedded"]
    assert applicable(after) == ["alexhex7_embedded"]
    # Unpooled, the pool position does not matter: both published softmax forms apply.
    assert applicable(_block("embedded_gaussian", 2, False, BEFORE)) == [
        "alexhex7_embedded",
        "slowfast_embedded",
    ]
    with pytest.raises(ValueError, match="pool_position='before_projection'"):
        formulations.alexhex7_embedded(before, x2)
    with pytest.raises(ValueError, match="pool_position='after_projection'"):
        formulations.slowfast_embedded(after, x2)
    with pytest.raises(ValueError, match="instantiation='embedded_gaussian'"):
        formulations.materialising_dot_product(after, x2)
    with pytest.raises(ValueError, match="instantiation='embedded_gaussian'"):
        formulations.materialising_concatenation(after, x2)
    channels_last = _block("dot_product", 2, False, AFTER, data_format="channels_last")
    assert applicable(channels_last) == []
    with pytest.raises(ValueError, match="channels_first"):
        formulations.materialising_dot_product(channels_last, x2)
    with pytest.raises(ValueError, match=r"x has shape \(1, 6, 4\)"):
        formulations.alexhex7_embedded(after, x2[..., 0])
    with pytest.raises(TypeError, match="block must be a NonLocalBlock"):
        formulations.alexhex7_embedded(torch.nn.Identity(), x2)


@pytest.mark.parametrize("name", list(FORMULATIONS))
def test_published_formulations_materialise_the_pairwise_matrix(name):
    """What makes them the published formulations: their peak memory holds the B x N x N'
    matrix (the concatenation its B x 2C' x N x N' tensor), and the skip estimate is of
    that order; ours, on the same block, stays far below it."""
    spec = FORMULATIONS[name]
    subsample = name == "materialising_concatenation"
    position = spec.pool_position or AFTER
    block = NonLocalBlock(
        16,
        spatial_dims=2,
        instantiation=spec.instantiation,
        subsample=subsample,
        pool_position=position,
    ).eval()
    x = torch.randn(1, 16, 32, 32)
    n = 32 * 32
    m = n // 4 if subsample else n
    pairwise = n * m * 4 * (2 * 8 if subsample else 1)  # float32; concat: 2C' channels
    with torch.no_grad():
        theirs = bench._peak_mib(lambda: spec.forward(block, x), "cpu") * 2**20
        ours = bench._peak_mib(lambda: block(x), "cpu") * 2**20
    estimate = pairwise_bytes(name, 1, n, m, 8, 4, backward=False)
    assert theirs >= pairwise
    assert estimate / 2 <= theirs <= estimate * 2
    assert ours < pairwise / 2


def test_memory_estimate_matches_the_h100_measurements():
    """anchors.md: AlexHex7 concatenation 8x1024x8x14x14 pooled peaked at 19.3 GB, the
    softmax forms at 24.1 GB for 1x512x16x56x56 (38.7 to 48.3 GB with backward), the
    dot product at 9.7 GB (bf16 autocast)."""
    n = 16 * 56 * 56
    checks = [
        (("materialising_concatenation", 8, 8 * 14 * 14, 8 * 7 * 7, 512, 2, False), 19320),
        (("alexhex7_embedded", 1, n, n, 256, 2, False), 24084),
        (("slowfast_embedded", 1, n, n, 256, 2, True), 48342),
        (("alexhex7_embedded", 1, n, n, 256, 2, True), 38738),
        (("materialising_dot_product", 1, n, n, 256, 2, False), 9678),
    ]
    for args, measured_mib in checks:
        estimate = pairwise_bytes(*args)
        assert measured_mib * 2**20 / 1.5 < estimate < measured_mib * 2**20 * 1.5, args
    with pytest.raises(ValueError, match="is not a formulation"):
        pairwise_bytes("ours", 1, 1, 1, 1, 4, False)


def test_cases_keep_the_structure_of_the_gpu_table():
    gpu = sidebyside.gpu_cases()
    assert {c.name for c in gpu} >= {c.name for c in bench.anchor_cases()}
    cpu = sidebyside.cpu_cases()
    scaled = [c for c in cpu if "(GPU " in c.name]
    # Each scaled case names its GPU case and keeps pooling and the instantiations tried.
    for c in scaled:
        anchor = c.name.split("(GPU ")[1].rstrip(")")
        twins = [g for g in gpu if g.name.startswith(anchor)]
        assert twins and all(g.subsample == c.subsample for g in twins), c.name
    pooled_concat = [c for c in scaled if c.instantiation == "concatenation"]
    assert len(pooled_concat) == 2 and all(c.subsample for c in pooled_concat)
    res3 = [c for c in cpu if c.name.startswith("2x512x4x28x28 pooled")]
    assert {(c.batch, c.channels, c.spatial, c.num_keys, c.backward) for c in res3} == {
        (2, 512, (4, 28, 28), 4 * 14 * 14, False),
        (2, 512, (4, 28, 28), 4 * 14 * 14, True),
    }
    assert {c.num_queries for c in cpu if c.name.startswith("sweep")} == {256, 1024, 4096}


def test_rounds_are_interleaved_in_a_rotating_order(monkeypatch):
    calls = []
    for name, spec in list(FORMULATIONS.items()):

        def logged(block, x, _forward=spec.forward, _name=name):
            calls.append(_name)
            return _forward(block, x)

        monkeypatch.setitem(FORMULATIONS, name, dataclasses.replace(spec, forward=logged))
    original = NonLocalBlock.forward

    def ours(self, *args, **kwargs):
        calls.append(f"ours {self.config.pool_position}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(NonLocalBlock, "forward", ours)
    case = Case("t", "embedded_gaussian", 1, 4, (4, 4), True, False)
    # Peak memory is measured after the rounds: leave it out of the call log.
    monkeypatch.setattr(sidebyside, "_peak_mib", lambda fn, device: 0.0)
    rows = sidebyside.run([case], warmup=0, rounds=4, log=None)
    assert [r["rounds"] for r in rows] == [4, 4, 4, 4]
    timed = calls[4:]  # after the one agreement check per candidate
    order = [timed[4 * r : 4 * r + 4] for r in range(4)]
    assert all(sorted(o) == sorted(order[0]) for o in order)
    assert [o[0] for o in order] == [order[0][r] for r in range(4)]


def test_candidates_over_the_memory_limit_are_skipped_not_run():
    case = Case("t", "concatenation", 1, 8, (8, 8), True, False)
    rows = sidebyside.run([case], rounds=1, warmup=0, limit_gib=1e-5, log=None)
    ours, theirs = rows
    assert ours["candidate"] == "ours" and ours["status"] == "ok" and ours["median_ms"] > 0
    assert theirs["status"].startswith("skipped (would need ") and theirs["median_ms"] is None
    assert ours["ratio"] is None
    assert "skipped (would need 0.0 GiB)" in sidebyside.table(rows)


def test_quick_mode_writes_table_and_json(tmp_path, capsys):
    # One thread: tiny backward passes on 2 busy cores spend most of their time waking
    # OpenMP threads. The setting is process-wide, so it is restored.
    threads = torch.get_num_threads()
    try:
        doc = sidebyside.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    written = json.loads((tmp_path / "sidebyside.json").read_text())
    assert written == json.loads(json.dumps(doc))
    rows = written["rows"]
    assert {r["kind"] for r in rows} == {"ours", *FORMULATIONS}
    assert {r["pass"] for r in rows} == {"fwd", "fwd+bwd"}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["rounds"] == 3 and 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["peak_mib"] >= 0
        assert r["max_abs_diff"] < 1e-4  # float32: the same function as ours
        assert (r["ratio"] is not None) == (r["kind"] == "ours")
    text = (tmp_path / "sidebyside.md").read_text()
    assert "OMP_WAIT_POLICY" in text and "1 torch thread(s)" in text
    assert "| quick 2x8x8x8 pooled concatenation | fwd+bwd | float32 | ours |" in text
    assert "| SlowFast embedded |" in text
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "tpu"], "argument --device: 'tpu'"),
        (["--device", "cuda:0"], "has a device index"),
        (["--dtypes", "float16"], "argument --dtypes: 'float16'"),
        (["--threads", "0"], "argument --threads: '0' is not a thread count"),
        (["--limit-gib", "-1"], "argument --limit-gib: '-1' is not a memory limit"),
        (["--rounds", "x"], "argument --rounds: 'x' is not a round count"),
        (["--out", __file__], "exists and is not a folder"),
        (["--quick", "extra"], "unrecognized arguments: extra"),
    ],
)
def test_bad_options_are_usage_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, even by mistake
    with pytest.raises(SystemExit) as exit_info:
        sidebyside.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only machine")
def test_cuda_without_a_gpu_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        sidebyside.main(["--device", "cuda"])
    assert "'cuda' is not available" in capsys.readouterr().err


def test_bench_full_on_cuda_also_runs_the_side_by_side(monkeypatch, tmp_path):
    """The wiring only: bench's own CUDA cases and the GPU are stubbed out."""
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stub GPU")
    monkeypatch.setattr(bench, "plot", lambda rows, path: None)
    monkeypatch.setattr(
        bench,
        "run_case",
        lambda case, impl, dtype, *a: {
            **vars(case),
            "impl": impl,
            "dtype": dtype,
            "N": 1,
            "N_keys": 1,
            "time_ms": None,
            "peak_mib": None,
            "status": "skipped: stub",
        },
    )
    monkeypatch.setattr(sidebyside, "main", lambda argv: seen.append(argv) or {})
    bench.main(["--mode", "full", "--device", "cuda", "--out", str(tmp_path)])
    assert seen == [["--device", "cuda", "--out", str(tmp_path)]]
    bench.main(
        ["--mode", "full", "--device", "cuda", "--out", str(tmp_path), "--naive-limit-gib", "60"]
    )
    assert seen[-1] == ["--device", "cuda", "--out", str(tmp_path), "--limit-gib", "60.0"]
    seen.clear()
    bench.main(["--mode", "smoke", "--device", "cuda", "--out", str(tmp_path)])
    assert seen == []
