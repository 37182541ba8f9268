"""Running the suite: backend resolution, clear errors, reports, summary."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import types

import pytest

from nonlocal_conformance import backends, summary
from nonlocal_conformance.adapter import Adapter
from nonlocal_conformance.backends import BackendError, load_adapter
from nonlocal_conformance.numpy_adapter import NumpyAdapter
from nonlocal_conformance.report import Report

from .runner import SUITE_DIR, run_suite


def test_builtin_names_point_at_the_backend_adapters():
    names = backends.known_backends()
    assert names["torch"] == "nonlocal_torch.conformance:TorchAdapter"
    for name in ("keras", "keras-tensorflow", "keras-jax", "keras-torch"):
        assert names[name] == "nonlocal_keras.conformance:KerasAdapter"
    assert isinstance(load_adapter("numpy"), Adapter)


def test_module_colon_class_loads_a_third_party_adapter():
    adapter = load_adapter("nonlocal_conformance.mutants:MaskIgnored")
    assert type(adapter).__name__ == "MaskIgnored"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nope", "unknown backend 'nope'"),
        ("no_such_module_xyz:Adapter", "could not be imported"),
        ("nonlocal_conformance.mutants:Missing", "has no attribute 'Missing'"),
        ("nonlocal_conformance.report:Report", "failed"),
        ("", "no backend given"),
    ],
)
def test_bad_backend_names_raise_one_clear_error(name, message):
    with pytest.raises(BackendError, match=message):
        load_adapter(name)


def test_keras_backend_already_imported_with_another_is_refused(monkeypatch):
    fake = types.SimpleNamespace(backend=types.SimpleNamespace(backend=lambda: "jax"))
    monkeypatch.setitem(sys.modules, "keras", fake)
    with pytest.raises(BackendError, match=r"already imported.*'jax'"):
        load_adapter("keras-tensorflow")


def test_keras_backend_is_selected_before_keras_is_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, "keras", raising=False)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    backends.select_keras_backend("tensorflow")
    import os

    assert os.environ["KERAS_BACKEND"] == "tensorflow"


def test_unknown_backend_stops_the_run_with_a_usage_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(SUITE_DIR),
            "-q",
            "-p",
            "no:cacheprovider",
            "--backend=nope",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    assert "unknown backend 'nope'" in proc.stderr
    assert proc.stdout.count("FAILED") == 0


def test_undeclared_features_are_reported_as_skips_with_reasons(tmp_path):
    code, report = run_suite(
        "nonlocal_conformance.mutants:MaskIgnored", tmp_path, "-k", "gradients"
    )
    assert code == pytest.ExitCode.OK
    skips = [t for t in report["tests"] if t["outcome"] == "skipped"]
    assert skips and all("gradients not supported" in t["detail"] for t in skips)
    assert report["totals"]["passed"] == 0


def test_report_header_names_backend_versions_device_dtype_precision(tmp_path):
    code, report = run_suite("numpy", tmp_path, "-k", "golden", dtype="bfloat16")
    assert code == pytest.ExitCode.OK
    assert report["backend"] == "numpy"
    assert report["dtype"] == "bfloat16" and report["device"] == "cpu"
    assert report["versions"]["numpy"]
    assert report["precision"] == {
        "storage": "bfloat16",
        "matmul_inputs": "bfloat16",
        "accumulation": "float64",
    }
    assert report["capabilities"]["gradients"] is True
    assert report["totals"]["passed"] >= 20  # the golden vectors


def test_golden_vectors_named_but_missing_or_damaged_are_a_usage_error(tmp_path, capsys):
    # A skip would let a mistyped --vectors pass a run without replaying a single vector.
    code, report = run_suite("numpy", tmp_path, "-k", "golden", f"--vectors={tmp_path}")
    assert code == pytest.ExitCode.USAGE_ERROR and report == {}
    assert f"--vectors={str(tmp_path)!r} is not a golden-vector folder" in capsys.readouterr().err
    (tmp_path / "index.json").write_text('{"spec_version": "1.0", "cases": [{"file": "../x"}]}')
    code, _ = run_suite("numpy", tmp_path, "-k", "golden", f"--vectors={tmp_path}")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert "expected an object whose 'file' is the name of a .json file" in capsys.readouterr().err


def test_an_unwritable_report_path_is_a_usage_error_before_anything_runs(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for path, problem in ((tmp_path, "is a folder"), (blocker / "r.json", "is not a folder")):
        code = pytest.main(
            [str(SUITE_DIR), "-q", "-p", "no:cacheprovider", "--backend=numpy",
             f"--conformance-report={path}", "-k", "wrong_rank"]
        )  # fmt: skip
        assert code == pytest.ExitCode.USAGE_ERROR
        assert problem in capsys.readouterr().err


def test_markdown_report_lists_every_check_and_capability(tmp_path):
    path = tmp_path / "r.md"
    pytest.main(
        [
            str(SUITE_DIR),
            "-q",
            "-p",
            "no:cacheprovider",
            "--backend=numpy",
            "--hypothesis-profile=meta",
            "-k",
            "shape or round_trip or bit_for_bit",
            f"--conformance-report={path}",
        ]
    )
    text = path.read_text()
    assert "| gradients | True |" in text and "| dtypes |" in text
    assert "test_exported_weights_equal_the_built_weights_bit_for_bit" in text


def _report(path, backend, failed, skipped_reason=None):
    tests = [
        {"nodeid": f"t::a[{i}]", "check": "a", "outcome": "failed", "detail": "boom"}
        for i in range(failed)
    ]
    if skipped_reason:
        tests.append(
            {"nodeid": "t::b", "check": "b", "outcome": "skipped", "detail": skipped_reason}
        )
    data = {
        "backend": backend,
        "dtype": "float32",
        "device": "cpu",
        "duration_s": 1.0,
        "totals": {"passed": 5, "failed": failed, "skipped": int(bool(skipped_reason))},
        "tests": tests,
    }
    path.write_text(json.dumps(data))
    return path


def test_summary_exits_non_zero_when_a_report_failed(tmp_path, capsys):
    ok = _report(tmp_path / "a.json", "numpy", 0, "dtype=float16 not supported")
    bad = _report(tmp_path / "b.json", "torch", 2)
    assert summary.main([str(ok)]) == 0
    assert summary.main([str(ok), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "numpy (1): dtype=float16 not supported" in out
    assert "torch: t::a[0]: boom" in out


def test_summary_merges_shards_of_one_run_and_keeps_other_runs_apart(tmp_path, capsys):
    first = _report(tmp_path / "a.json", "keras-jax", 0)
    _report(tmp_path / "b.json", "keras-jax", 1)  # another shard: no test in common
    runs = {
        "c.json": {"dtype": "float64"},
        "d.json": {"options": {"strategy": "chunked"}},  # the same backend, forced strategy
        "e.json": {"adapter_name": "mine"},
    }
    for name, change in runs.items():
        (tmp_path / name).write_text(json.dumps(json.loads(first.read_text()) | change))
    names = ("a.json", "b.json", *runs, "b.json")  # b twice: a rerun shares its tests
    assert summary.main([str(tmp_path / n) for n in names]) == 1
    rows = [line.split("  ") for line in capsys.readouterr().out.splitlines()[1:6]]
    rows = [[cell.strip() for cell in row if cell.strip()] for row in rows]
    # run, passed, failed, skipped, examples, declined, time (s), dtype
    assert [row[:8] for row in rows] == [
        ["keras-jax", "10", "1", "0", "0", "0", "2.0", "float32"],
        ["keras-jax", "5", "0", "0", "0", "0", "1.0", "float64"],
        ["keras-jax strategy=chunked", "5", "0", "0", "0", "0", "1.0", "float32"],
        ["keras-jax (mine)", "5", "0", "0", "0", "0", "1.0", "float32"],
        ["keras-jax", "5", "1", "0", "0", "0", "1.0", "float32"],
    ]


def test_summary_exits_non_zero_for_an_unreadable_report(tmp_path):
    broken = tmp_path / "x.json"
    broken.write_text("{")
    assert summary.main([str(broken)]) == 1


def test_entry_point_group_names_a_third_party_backend(monkeypatch):
    from importlib import metadata

    ep = metadata.EntryPoint(
        name="thirdparty",
        value="nonlocal_conformance.mutants:MaskIgnored",
        group=backends.ENTRY_POINT_GROUP,
    )
    monkeypatch.setattr(
        backends.metadata,
        "entry_points",
        lambda group: [ep] if group == backends.ENTRY_POINT_GROUP else [],
    )
    assert backends.known_backends()["thirdparty"] == ep.value
    assert type(load_adapter("thirdparty")).__name__ == "MaskIgnored"


class TwoBugs(NumpyAdapter):
    """Crashes on a batch of one and returns z + 1 otherwise: two distinct failures."""

    name = "two-bugs"

    def forward(self, block, x, **kwargs):
        if x.shape[0] == 1:
            raise RuntimeError("one of the variables needed for gradient computation was modified")
        out = super().forward(block, x, **kwargs)
        return dataclasses.replace(out, z=out.z + 1)


def test_a_failure_reports_every_distinct_failure_with_its_case_in_one_line(tmp_path, capsys):
    code, report = run_suite(
        f"{__name__}:TwoBugs", tmp_path, "-k", "test_output_matches_reference_in_inference"
    )
    assert code == pytest.ExitCode.TESTS_FAILED
    out = capsys.readouterr().out
    assert "array(" not in out, "a falsifying example must not dump arrays"
    failed = [t for t in report["tests"] if t["outcome"] == "failed"]
    assert failed and all(t["failures"] for t in failed)
    errors = {f["error"].split(":")[0] for t in failed for f in t["failures"]}
    assert errors == {"RuntimeError", "AssertionError"}, errors
    both = [t for t in failed if len(t["failures"]) == 2]
    assert both, "Hypothesis found both bugs in one check: the report lists both"
    assert both[0]["detail"].startswith("2 distinct failures: ")
    for failure in (f for t in failed for f in t["failures"]):
        case = failure["case"]
        assert case.startswith("Case(NonLocalConfig(") and "\n" not in case, case
    markdown = Report(header={"backend": "two-bugs"})
    for t in failed:
        markdown.add(t["nodeid"], "failed", 0.0, t["detail"], failures=t["failures"])
    text = markdown.to_markdown()
    assert "## Failures" in text and "- RuntimeError: one of the variables" in text
