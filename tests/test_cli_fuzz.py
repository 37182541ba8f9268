"""Every command-line interface and file reader outside the core survives hostile input.

A CLI given a bad argument exits with argparse's usage error (status 2, the option and the
value named) or one clean line on stderr (status 1); a reader given a bad file raises a
ValueError naming the file. Never a traceback from deep inside, never a silent wrong result.
The CLIs run in-process through their ``main(argv)``, with the slow parts (measuring,
regenerating the golden vectors) replaced: invalid input must never reach them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nonlocal_conformance import summary
from nonlocal_core import nonlocal_forward, vectors
from nonlocal_torch import bench

ROOT = Path(__file__).resolve().parents[1]
# tmp_path is shared by a test's examples: each example writes the files it reads.
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Relative paths (``--out ""`` is ".") land in tmp_path, never in the working tree,
    even when a check these tests guard is broken."""
    monkeypatch.chdir(tmp_path)


@dataclasses.dataclass
class Run:
    """What one in-process ``main(argv)`` did: its result or exit code, stdout, stderr."""

    result: Any
    code: int | str | None
    out: str
    err: str


def run_main(main, argv: list[str]) -> Run:
    """`main(argv)` with its output captured; SystemExit becomes `code`. Any other exception
    (what a traceback on the command line would show) propagates and fails the test."""
    out, err = io.StringIO(), io.StringIO()
    result, code = None, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result = main(argv)
        except SystemExit as exc:
            code = exc.code
    return Run(result, code, out.getvalue(), err.getvalue())


def assert_usage_error(run: Run, option: str, value: str | None = None) -> None:
    """Exit status 2 and argparse's error naming `option` and, where it can, `value`."""
    assert run.code == 2, (run.code, run.result, run.err)
    message = run.err.split(": error: ", 1)[-1]
    assert option in message, message
    # argparse cannot name a value it took for an option ("-inf": expected one argument).
    if value is not None and "expected one argument" not in message:
        assert repr(value) in message, message


def junk_text(**kwargs) -> st.SearchStrategy[str]:
    """Strings a command line can carry (no NUL, no lone surrogate)."""
    alphabet = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
    return st.text(alphabet, **kwargs)


def parses(convert, text: str) -> Any:
    try:
        return convert(text)
    except ValueError:
        return None


# nonlocal_torch.bench ------------------------------------------------------------------------

CPUS = os.cpu_count() or 1
BENCH_DTYPES = ("float32", "bfloat16")


def valid_dtypes(text: str) -> bool:
    """The contract of ``--dtypes``: a comma-separated, repeat-free subset of the two."""
    names = [n.strip() for n in text.split(",")]
    return all(n in BENCH_DTYPES for n in names) and len(set(names)) == len(names)


def valid_threads(text: str) -> bool:
    n = parses(int, text)
    return n is not None and 1 <= n <= CPUS


def valid_limit(text: str) -> bool:
    x = parses(float, text)
    return x is not None and 0 < x < math.inf


@contextlib.contextmanager
def no_benchmark():
    """Fail, instead of measuring for minutes, if main goes past its argument checks."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"main went past its argument checks: {args}")

    threads = torch.get_num_threads()
    try:
        with (
            mock.patch.object(bench, "run_case", refuse),
            mock.patch.object(bench.torch, "set_num_threads", refuse),
        ):
            yield
    finally:
        torch.set_num_threads(threads)


def bad_bench_values(option: str, a_file: Path) -> st.SearchStrategy[str]:
    """Values of `option` invalid by construction (filtered through the contracts above)."""
    edges = ["0", "-0", "-1", "1e999", "inf", "-inf", "nan", "1.5", "1e-400", str(CPUS + 1)]
    numbers = st.sampled_from(edges) | st.one_of(
        st.integers(-(10**30), 10**30).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(str),
        junk_text(max_size=12),
    )
    names = [*BENCH_DTYPES, "float64", "half", "FLOAT32", "", " "]
    dtype_lists = st.lists(st.sampled_from(names), min_size=1, max_size=4).map(",".join)
    devices = st.sampled_from(["cuda", "cuda:0", "cpu:0", "meta", "mps", "CPU", "cpu "])
    files = [str(a_file), str(a_file / "sub"), str(a_file / "a" / "b"), ""]
    return {
        "--dtypes": (dtype_lists | junk_text(max_size=20)).filter(lambda v: not valid_dtypes(v)),
        "--device": (devices | junk_text(max_size=20)).filter(
            lambda v: v != "cpu" and (v != "cuda" or not torch.cuda.is_available())
        ),
        "--threads": numbers.filter(lambda v: not valid_threads(v)),
        "--naive-limit-gib": numbers.filter(lambda v: not valid_limit(v)),
        "--out": st.sampled_from(files),
        "--mode": junk_text(max_size=10).filter(lambda v: v not in ("smoke", "full")),
    }[option]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--dtypes", "float7"),
        ("--dtypes", "float32,"),
        ("--device", "nodevice"),
        ("--device", "cuda:1"),
        ("--threads", "-3"),
        ("--threads", "0"),
        ("--threads", str(10**6)),
        ("--naive-limit-gib", "-1"),
        ("--naive-limit-gib", "nan"),
        ("--naive-limit-gib", "1e999"),
        ("--out", "A_FILE"),
        ("--out", "A_FILE/sub"),
        ("--out", "bad\x00name"),
    ],
)
def test_bench_rejects_a_bad_value_naming_option_and_value(tmp_path, option, value):
    (tmp_path / "a-file").write_text("not a folder")
    value = value.replace("A_FILE", str(tmp_path / "a-file"))
    with no_benchmark():
        run = run_main(bench.main, ["--mode", "smoke", option, value])
    assert_usage_error(run, f"argument {option}", value)


@pytest.mark.parametrize(
    "option", ["--dtypes", "--device", "--threads", "--naive-limit-gib", "--out", "--mode"]
)
@settings(FUZZ, max_examples=50)
@given(data=st.data())
def test_bench_rejects_any_bad_value(tmp_path, option, data):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    value = data.draw(bad_bench_values(option, a_file), label="value")
    # A valid option first, so that the bad one is not simply the first argument.
    good = ["--dtypes", "float32"] if option != "--dtypes" else ["--mode", "smoke"]
    with no_benchmark():
        run = run_main(bench.main, [*good, option, value])
    assert_usage_error(run, f"argument {option}", value)


@settings(FUZZ, max_examples=30)
@given(options=st.lists(junk_text(min_size=1, max_size=12).map("--{}".format), min_size=1))
def test_bench_rejects_unknown_options(options):
    known = ("--mode", "--device", "--out", "--dtypes", "--naive-limit-gib", "--threads", "--help")
    # argparse takes any prefix of a known option (and "--x=value") for that option.
    options = [o for o in options if not any(k.startswith(o.split("=")[0]) for k in known)]
    if options:
        with no_benchmark():
            run = run_main(bench.main, ["--device", "cpu", *options])
        assert run.code == 2, run
        assert "unrecognized arguments" in run.err and options[0] in run.err, run.err


def fake_run_case(case, impl, dtype, device, warmup, repeats, naive_limit):
    """The row `run_case` writes for a skipped case, without measuring anything."""
    row = {**dataclasses.asdict(case), "impl": impl, "dtype": dtype, "device": device}
    row.update(N=case.num_queries, N_keys=case.num_keys, time_ms=None, peak_mib=None)
    return {**row, "status": f"skipped: test (limit {naive_limit})"}


@settings(FUZZ, max_examples=25)
@given(
    mode=st.sampled_from(["smoke", "full"]),
    dtypes=st.sampled_from([["float32"], ["bfloat16"], [*BENCH_DTYPES], [*BENCH_DTYPES][::-1]]),
    separator=st.sampled_from([",", ", ", " , "]),
    threads=st.integers(1, CPUS),
    limit=st.floats(1e-6, 1e6),
    out=st.sampled_from(["new", "new/deeper", "existing"]),
)
def test_bench_accepts_every_valid_option(tmp_path, mode, dtypes, separator, threads, limit, out):
    folder = tmp_path / out
    if out == "existing":
        folder.mkdir(exist_ok=True)
    argv = ["--mode", mode, "--device", "cpu", "--out", str(folder), "--threads", str(threads)]
    argv += ["--dtypes", separator.join(dtypes), "--naive-limit-gib", repr(limit)]
    saved = torch.get_num_threads()
    try:
        with (
            mock.patch.object(bench, "run_case", fake_run_case),
            mock.patch.object(bench, "plot", lambda rows, path: path.write_bytes(b"")),
        ):
            run = run_main(bench.main, argv)
        assert run.code is None, run.err
        doc = run.result
        assert (doc["mode"], doc["device"], doc["threads"]) == (mode, "cpu", threads)
        assert list(dict.fromkeys(r["dtype"] for r in doc["rows"])) == dtypes
        assert {r["status"] for r in doc["rows"]} == {f"skipped: test (limit {limit})"}
        assert json.loads((folder / "bench.json").read_text()) == json.loads(json.dumps(doc))
    finally:
        torch.set_num_threads(saved)


# nonlocal_conformance.summary ----------------------------------------------------------------

GOOD = {
    "format": "nonlocal-conformance-report/1",
    "backend": "good-backend",
    "adapter": "pkg:Adapter",
    "dtype": "float32",
    "device": "cpu",
    "hypothesis_profile": "ci",
    "duration_s": 1.5,
    "totals": {"passed": 2, "failed": 0, "skipped": 1},
    "tests": [
        {"nodeid": "t::a", "check": "a", "params": "", "outcome": "passed", "detail": ""},
        {"nodeid": "t::b", "check": "b", "params": "", "outcome": "passed", "detail": ""},
        {"nodeid": "t::c", "check": "c", "params": "", "outcome": "skipped", "detail": "no mask"},
    ],
}


def is_valid_report(doc: Any) -> bool:
    """The contract of a report the summary renders, written apart from `summary`'s code."""

    def text_or_null(v):
        return v is None or isinstance(v, str)

    def count(v):
        return type(v) is int and v >= 0

    if not isinstance(doc, dict) or doc.get("format", GOOD["format"]) != GOOD["format"]:
        return False
    run_keys = ("backend", "adapter", "dtype", "device", "hypothesis_profile")
    totals, duration, tests = doc.get("totals", {}), doc.get("duration_s", 0), doc.get("tests", [])
    if not all(text_or_null(doc.get(k)) for k in run_keys) or not isinstance(totals, dict):
        return False
    if not all(count(totals.get(k, 0)) for k in GOOD["totals"]):
        return False
    if type(duration) not in (int, float) or not 0 <= duration < math.inf:
        return False
    if not isinstance(tests, list):
        return False
    for t in tests:
        if not isinstance(t, dict) or t.get("outcome") not in ("passed", "failed", "skipped"):
            return False
        if not isinstance(t.get("nodeid"), str) or not text_or_null(t.get("detail")):
            return False
    try:  # no lone surrogates (from "\ud800" escapes): they cannot be printed
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_valid_content(content: bytes) -> bool:
    try:
        return is_valid_report(json.loads(content.decode("utf-8")))
    except (ValueError, RecursionError):
        return False


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | junk_text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(junk_text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
REPORT_FIELDS = [
    *("format", "backend", "adapter", "dtype", "device", "hypothesis_profile", "duration_s"),
    *("totals", "totals.passed", "totals.failed", "totals.skipped"),
    *("tests", "tests.0", "tests.0.outcome", "tests.0.nodeid", "tests.0.detail"),
]


@st.composite
def plausible_reports(draw) -> dict:
    """The good report with one field, or one field of a test record, replaced by junk."""
    doc = json.loads(json.dumps(GOOD))
    *parents, last = draw(st.sampled_from(REPORT_FIELDS)).split(".")
    value = draw(json_values | st.sampled_from([[], {}, "x", -1, 1.5, True, math.nan, math.inf]))
    target = doc
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[int(last) if isinstance(target, list) else last] = value
    return doc


@FUZZ
@given(
    content=st.one_of(
        st.binary(max_size=64),
        json_values.map(lambda v: json.dumps(v).encode()),
        *[plausible_reports().map(lambda d: json.dumps(d).encode())] * 3,  # most often
    )
)
@example(content=b"[1, 2]")
@example(content=b"5")
@example(content=b'{"totals": []}')
@example(content=b'{"tests": 5}')
@example(content=b'{"duration_s": "x"}')
@example(content=b'{"duration_s": NaN}')
@example(content=b'{"tests": [1]}')
@example(content=b'{"tests": [{"nodeid": "t", "outcome": "failed", "detail": []}]}')
@example(content=b'{"backend": ["x"]}')
@example(content=b'{"backend": "\\ud800"}')
@example(content=b"[" * 100_000)
@example(content=b"\xff\xfe{}")
@example(content=b"{}")
def test_summary_reports_a_malformed_file_and_summarises_the_other(tmp_path, content):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(GOOD))
    bad.write_bytes(content)
    run = run_main(summary.main, [str(good), str(bad)])
    assert run.code is None, run.err
    if is_valid_content(content):  # a valid report (maybe another shard of the good run)
        assert run.err == "" and "good-backend" in run.out
    else:
        assert run.result == 1
        assert run.out.splitlines()[1].split()[:4] == ["good-backend", "2", "0", "1"]
        lines = run.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"unreadable report {bad}: "), lines


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "the document is an array [1, 2]: expected a JSON object"),
        ('{"totals": []}', "'totals' is an array []: expected an object of counts"),
        ('{"totals": {"failed": -1}}', "'totals.failed' is a number -1: expected an integer"),
        ('{"tests": 5}', "'tests' is a number 5: expected an array of test records"),
        ('{"tests": [7]}', "'tests[0]' is a number 7: expected an object"),
        ('{"tests": [{"nodeid": "t"}]}', "'tests[0].outcome' is null: expected one of"),
        ('{"duration_s": "x"}', "'duration_s' is a string \"x\": expected a finite number"),
        ('{"format": "other/2"}', "'format' is a string \"other/2\": expected"),
        ('{"backend": "\\ud800"}', "holds text that is not valid Unicode"),
    ],
)
def test_summary_says_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "r.json"
    path.write_text(text)
    run = run_main(summary.main, [str(path)])
    assert run.result == 1
    assert run.err.startswith(f"unreadable report {path}: {message}"), run.err


def test_summary_fails_on_a_failed_test_record_whatever_the_totals_say(tmp_path):
    lying = dict(GOOD, tests=[{"nodeid": "t::x", "outcome": "failed", "detail": "boom"}])
    (tmp_path / "r.json").write_text(json.dumps(lying))
    run = run_main(summary.main, [str(tmp_path / "r.json")])
    assert run.result == 1 and "good-backend: t::x: boom" in run.out and run.err == ""


def test_summary_command_prints_no_traceback(tmp_path):
    bad = {
        "list.json": "[1]",
        "totals.json": '{"totals": []}',
        "tests.json": '{"tests": 5}',
        "duration.json": '{"duration_s": "x"}',
        "not-json.json": "{",
        "surrogate.json": '{"backend": "\\ud800"}',
        "deep.json": "[" * 100_000,
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "good.json").write_text(json.dumps(GOOD))
    paths = [str(tmp_path / n) for n in [*bad, "good.json", "missing.json"]]
    # The packages of this tree (a copy's, under scripts/mutations.py), then the caller's path.
    packages = [str(ROOT / folder) for folder in ("", "backends", "conformance")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*packages, os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "nonlocal_conformance.summary", *paths],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    assert [line.split(": ")[0] for line in result.stderr.splitlines()] == [
        f"unreadable report {p}" for p in paths if not p.endswith("good.json")
    ], result.stderr
    assert "good-backend" in result.stdout


# nonlocal_core.vectors -----------------------------------------------------------------------


@contextlib.contextmanager
def tiny_generate():
    """`vectors.generate` replaced by two small files, so that main runs in milliseconds."""
    files = {"index.json": '{"cases": []}\n', "a.json": "{}\n"}
    with mock.patch.object(vectors, "generate", lambda: dict(files)):
        yield


file_names = junk_text(min_size=1, max_size=12).filter(
    lambda s: "/" not in s and s not in (".", "..") and len(s.encode()) < 200
)


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_vectors_main_rejects_a_bad_out_and_writes_a_good_one(tmp_path, data):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    bad = [str(a_file), str(a_file / "sub"), str(a_file / "a" / "b"), "", "bad\x00name"]
    out, valid = data.draw(
        st.tuples(st.sampled_from(bad), st.just(False))
        | st.tuples(
            st.lists(file_names, min_size=1, max_size=3).map(
                lambda names: str(tmp_path.joinpath("ok", *names))
            ),
            st.just(True),
        ),
        label="out",
    )
    check = data.draw(st.booleans(), label="--check")
    with tiny_generate():
        run = run_main(vectors.main, ["--out", out, *(["--check"] if check else [])])
    if not valid:
        assert_usage_error(run, "argument --out", out)
    elif check:  # the fresh folder lacks the files, or has them from an earlier example
        assert run.code is None and run.result in (0, 1), run
    else:
        assert run.code is None and run.result == 0, run
        assert (Path(out) / "a.json").read_text() == "{}\n"


def test_vectors_main_reports_an_unwritable_folder_on_one_line(tmp_path):
    (tmp_path / "stale.json").mkdir()  # a stale vector the writer must delete is a folder
    with tiny_generate():
        run = run_main(vectors.main, ["--out", str(tmp_path)])
    assert run.code is None and run.result == 1
    assert run.err.count("\n") == 1 and str(tmp_path / "stale.json") in run.err, run.err


def doc_get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def paths_of(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) into a JSON document, the root excluded."""
    if isinstance(doc, dict):
        items = doc.items()
    elif isinstance(doc, list):
        items = enumerate(doc)
    else:
        return []
    return [p for key, value in items for p in [(*prefix, key), *paths_of(value, (*prefix, key))]]


def assert_is_a_case(loaded: dict, text: str) -> None:
    """What a file `load_case` accepted must be: a case whose arrays are the file's values
    with their declared types, on which the reference runs and gives the stored shapes."""
    raw = json.loads(text)
    assert raw["spec_version"].split(".")[0] == "1"
    assert isinstance(raw["training"], bool) and loaded["training"] is raw["training"]
    assert isinstance(raw["name"], str) and isinstance(raw["description"], str)
    for group in ("inputs", "weights", "expected"):
        for key, tensor in raw[group].items():
            if tensor is None:
                assert group == "inputs" and key in ("context", "key_mask")
                assert loaded[group][key] is None
                continue
            kind = bool if key == "key_mask" else float
            assert tensor["dtype"] == ("bool" if kind is bool else "float64")
            for v in tensor["data"]:
                if kind is bool:
                    assert type(v) is bool, v
                else:
                    assert type(v) in (int, float) and math.isfinite(v), v
            want = np.array(tensor["data"], dtype=kind).reshape(tensor["shape"])
            assert loaded[group][key].dtype == want.dtype
            np.testing.assert_array_equal(loaded[group][key], want)
    inputs = loaded["inputs"]
    with np.errstate(all="ignore"):  # edited values may be huge; only shapes matter here
        z, attention = nonlocal_forward(
            inputs["x"],
            loaded["weights"],
            loaded["config"],
            context=inputs["context"],
            key_mask=inputs["key_mask"],
            training=loaded["training"],
            return_attention=True,
        )
    assert z.shape == loaded["expected"]["z"].shape
    assert attention.shape == loaded["expected"]["attention"].shape


MASKED = vectors.DEFAULT_DIR / "dot_2d_subsample_mask.json"  # a key mask and pooled keys
SMALL = sorted(vectors.DEFAULT_DIR.glob("*_1d*.json"), key=lambda p: p.stat().st_size)[:3]


@st.composite
def corrupted_cases(draw) -> tuple[bytes, bool | None]:
    """(content, kept_valid) of a real vector file truncated, with bytes overwritten, or
    edited as JSON; kept_valid is None where only `assert_is_a_case` can tell."""
    text = draw(st.sampled_from([*SMALL, MASKED]), label="file").read_text(encoding="utf-8")
    kinds = ["truncate", "bytes", "set", "delete", "add", "retype", "reshape", "benign"]
    kind = draw(st.sampled_from(kinds), label="kind")
    if kind == "truncate":  # always loses the closing brace
        return text[: draw(st.integers(0, len(text) - 2))].encode(), False
    if kind == "bytes":
        data = bytearray(text.encode())
        for _ in range(draw(st.integers(1, 3))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data), None
    doc = json.loads(text)
    paths = paths_of(doc)
    if kind == "benign":  # another finite number in a float tensor, or another description
        numbers = [
            p
            for p in paths
            if p[-2:-1] == ("data",)
            and type(doc_get(doc, p)) is float
            and "norm.running_var" not in p  # a variance is >= 0
        ]
        path = draw(st.sampled_from([*numbers, ("description",)]))
        if path == ("description",):
            value = draw(junk_text(max_size=20))
        else:
            value = draw(st.floats(-1e6, 1e6) | st.integers(-(10**6), 10**6))
    elif kind == "retype":  # a data entry of another JSON type, or an edge value
        path = draw(st.sampled_from([p for p in paths if p[-2:-1] == ("data",)]))
        edges = [True, False, 0, 1, -1, 1.5, 1e308, math.nan, math.inf, "1", None, [1.0], {}]
        value = draw(st.sampled_from(edges))
    elif kind == "reshape":  # a tensor's shape reordered: the same number of values
        path = draw(st.sampled_from([p for p in paths if p[-1:] == ("shape",)]))
        value = draw(st.permutations(doc_get(doc, path)))
    elif kind == "add":  # an unknown key in some object
        path = draw(st.sampled_from([p for p in [(), *paths] if isinstance(doc_get(doc, p), dict)]))
        target = doc_get(doc, path)
        path += (draw(junk_text(min_size=1, max_size=8).filter(lambda k: k not in target)),)
        value = draw(json_values)
    else:
        path = draw(st.sampled_from(paths))
        value = draw(json_values | st.sampled_from(["float32", "bool", [], {}, 1, True, 1e308]))
    parent = doc_get(doc, path[:-1])
    if kind == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return json.dumps(doc).encode(), True if kind == "benign" else None


@settings(FUZZ, max_examples=300)
@given(corrupted=corrupted_cases())
@example(corrupted=(b"", False))
@example(corrupted=(b"\xff\xfe\x00", False))
@example(corrupted=(b"[" * 100_000, False))
@example(corrupted=(b'{"a": ' + b"1" * 5000 + b"}", False))
def test_load_case_rejects_a_corrupted_file_naming_it(tmp_path, corrupted):
    content, kept_valid = corrupted
    path = tmp_path / "case.json"
    path.write_bytes(content)
    try:
        loaded = vectors.load_case(path)
    except ValueError as exc:
        assert str(path) in str(exc), exc
        assert kept_valid is not True, f"a valid edit was refused: {exc}"
        return
    assert kept_valid is not False, "a broken file was accepted"
    assert_is_a_case(loaded, content.decode("utf-8"))


def edited(change) -> str:
    doc = json.loads(MASKED.read_text())
    change(doc)
    return json.dumps(doc)


BAD_FILES = {
    "truncated": (lambda: MASKED.read_text()[:500], " is not JSON: JSONDecodeError"),
    "foreign": (lambda: "PK\x03\x04 a zip archive", " is not JSON"),
    "a list": (lambda: "[1, 2, 3]", ": the document is [1, 2, 3]: expected a JSON object"),
    "float32": (
        lambda: edited(lambda d: d["inputs"]["x"].update(dtype="float32")),
        ": inputs.x has dtype \"float32\": expected 'float64'",
    ),
    "short data": (
        lambda: edited(lambda d: d["weights"]["g.weight"]["data"].pop()),
        ": weights.g.weight has data of 7 values: expected a flat list of 8 values",
    ),
    "x reshaped": (
        lambda: edited(lambda d: d["expected"]["z"].update(shape=[2, 4, 2, 8])),
        ": expected.z has shape [2, 4, 2, 8]: expected [2, 4, 4, 4]",
    ),
    "unknown config field": (
        lambda: edited(lambda d: d["config"].update(kernel=3)),
        ": config is invalid: NonLocalConfig.from_dict got unknown field(s) ['kernel']",
    ),
    "mask as 0/1": (
        lambda: edited(lambda d: d["inputs"]["key_mask"]["data"].__setitem__(0, 1)),
        ": inputs.key_mask has the data entry 1 at 0: expected true or false",
    ),
    "nan": (
        lambda: edited(lambda d: d["inputs"]["x"]["data"].__setitem__(0, math.nan)),
        ": inputs.x has non-finite values",
    ),
    "spec 2": (
        lambda: edited(lambda d: d.update(spec_version="2.0")),
        ': spec_version is "2.0": expected a 1.x vector',
    ),
    "a missing weight": (
        lambda: edited(lambda d: d["weights"].pop("g.bias")),
        ": the arrays do not fit the config: missing weight(s) ['g.bias']",
    ),
    "a missing input": (
        lambda: edited(lambda d: d["inputs"].pop("key_mask")),
        ": inputs is {",
    ),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_load_case_says_what_is_wrong(tmp_path, name):
    make, message = BAD_FILES[name]
    path = tmp_path / "case.json"
    path.write_text(make())
    with pytest.raises(ValueError) as info:
        vectors.load_case(path)
    assert str(info.value).startswith(repr(str(path)) + message), str(info.value)


def test_load_case_keeps_os_errors_and_reads_every_vector(tmp_path):
    with pytest.raises(FileNotFoundError):
        vectors.load_case(tmp_path / "missing.json")
    with pytest.raises(IsADirectoryError):
        vectors.load_case(tmp_path)
    for path in sorted(vectors.DEFAULT_DIR.glob("*.json")):
        if path.name != "index.json":
            assert_is_a_case(vectors.load_case(path), path.read_text())
