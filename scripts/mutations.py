"""Mutation tests: small one-line bugs, each of which named tests must catch.

    ./dev mutations                           (or: python scripts/mutations.py)
    python scripts/mutations.py --list
    python scripts/mutations.py --only keras-fused-attention-x1000 [--only ...] [--jobs 2]

Each `Mutation` names a file, an exact text in it (which must occur exactly once), the text
that replaces it, and the pytest node ids that must fail once it is replaced. For each one,
in a temporary copy of the repository (its git-tracked and not-ignored files), the script
applies the mutation and runs only those tests there. The copy's packages are the ones
imported: PYTHONPATH names the copy's root, ``backends/`` and ``conformance/``, ahead of the
editable install, which maps the packages to this checkout. First, a control run of the same
tests on an unmutated copy must pass: a test that fails anyway proves nothing when it fails
on a mutant.

A mutant is killed when every node id named for it selects at least one failing test. The
exit status is 0 when every mutant is killed, and 1 when the control failed, a mutant
survived (the named tests, or some of them, still pass), a mutation no longer applies (its
text is gone from the file, or is there more than once), or pytest could not run the tests
(a collection error, a node id that selects nothing); each is listed.

Example:
    >>> names = [m.name for m in MUTATIONS]
    >>> len(names) == len(set(names)) and "keras-fused-attention-x1000" in names
    True
    >>> failed_ids("FAILED tests/a.py::test_x[1] - AssertionError\\nPASSED tests/a.py::test_y\\n")
    ['tests/a.py::test_x[1]']
    >>> caught("tests/a.py::test_x", ["tests/a.py::test_x[1]"])
    True
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYER_TESTS = "tests/keras/test_layer.py"
TOLERANCE_TESTS = "tests/conformance_meta/test_dtypes_and_tolerance.py"
SOURCE_TESTS = "tests/convert/test_sources.py"
FORWARD_BOUND = "    err_z = err_z + us * np.abs(z_flat) + p.tiny\n"


@dataclasses.dataclass(frozen=True)
class Mutation:
    """One bug: in `path`, `old` (found exactly once) becomes `new`; every id in `tests`
    must then select a failing test. `keras_backend` is KERAS_BACKEND for the run."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    keras_backend: str | None = None


MUTATIONS: tuple[Mutation, ...] = (
    # The tolerance model's bound on z, inflated or zeroed: the meta-tests perturb by fixed
    # amounts, so either must fail them.
    Mutation(
        "tolerance-forward-bound-x1e6",
        "conformance/nonlocal_conformance/trace.py",
        FORWARD_BOUND,
        "    err_z = 1e6 * (err_z + us * np.abs(z_flat) + p.tiny)\n",
        (f"{TOLERANCE_TESTS}::test_bound_rejects_a_perturbation_larger_than_rounding",),
    ),
    Mutation(
        "tolerance-forward-bound-x100",
        "conformance/nonlocal_conformance/trace.py",
        FORWARD_BOUND,
        "    err_z = 100 * (err_z + us * np.abs(z_flat) + p.tiny)\n",
        (f"{TOLERANCE_TESTS}::test_bound_rejects_a_perturbation_larger_than_rounding",),
    ),
    Mutation(
        "tolerance-forward-bound-zero",
        "conformance/nonlocal_conformance/trace.py",
        FORWARD_BOUND,
        "    err_z = 0 * (err_z + us * np.abs(z_flat) + p.tiny)\n",
        (f"{TOLERANCE_TESTS}::test_bound_accepts_legitimate_float32_rounding",),
    ),
    Mutation(
        "keras-fused-attention-x1000",
        "backends/nonlocal_keras/functional.py",
        "        return ops.squeeze(y, 2)\n",
        "        return ops.squeeze(y, 2) * 1000\n",
        (f"{LAYER_TESTS}::test_a_single_key_is_valid_and_warns_nothing[embedded_gaussian]",),
        keras_backend="torch",
    ),
    Mutation(
        "keras-no-float32-accumulation",
        "backends/nonlocal_keras/functional.py",
        '    return "float32" if dtype in HALF_DTYPES else dtype\n',
        "    return dtype\n",
        (
            f"{LAYER_TESTS}::test_mixed_precision_policies",
            f"{LAYER_TESTS}::test_mixed_precision_softmax_is_computed_in_float32",
        ),
        keras_backend="torch",
    ),
    Mutation(
        "keras-biased-running-variance",
        "backends/nonlocal_keras/layer.py",
        "        unbiased = var * n / (n - 1.0 + ops.cast(n <= 1.0, var.dtype))",
        "        unbiased = var",
        (f"{LAYER_TESTS}::test_training_updates_running_statistics_sanely",),
        keras_backend="torch",
    ),
    Mutation(
        "keras-example-prints-a-better-accuracy",
        "examples/keras_train.py",
        "test accuracy {accuracy:.2f}",
        "test accuracy {min(accuracy + 0.1, 1.0):.2f}",
        ("tests/keras/test_example.py::test_example_trains_a_few_steps",),
        keras_backend="torch",
    ),
    Mutation(
        "docs-page-shows-a-wrong-output",
        "docs/quickstart-numpy.md",
        "# -> 8 (2, 2) 0.3536",
        "# -> 9 (3, 3) 0.9999",
        ("tests/docs/test_docs_code_blocks.py::test_page_code_runs[quickstart-numpy.md]",),
    ),
    Mutation(
        "docs-runner-ignores-shown-outputs",
        "tests/docs/blocks.py",
        '            if not checker.check_output(want + "\\n", got, doctest.ELLIPSIS):\n',
        "            if False:\n",
        (
            "tests/docs/test_docs_code_blocks.py"
            "::test_a_page_that_shows_a_wrong_output_fails_with_its_line",
        ),
    ),
    Mutation(
        "readme-torch-block-not-the-identity",
        "README.md",
        'NonLocal3d(64, instantiation="embedded_gaussian", subsample=True)\n',
        'NonLocal3d(64, instantiation="embedded_gaussian", subsample=True, residual=False)\n',
        ("tests/test_readme.py::test_readme_example_runs_and_keeps_its_promise[1]",),
    ),
    Mutation(
        "core-default-scale-one-over-c",
        "nonlocal_core/config.py",
        "            return 1.0 / math.sqrt(self.embed_dim)\n",
        "            return 1.0 / self.embed_dim\n",
        (
            "tests/core/test_reference.py"
            "::test_two_positions_gaussian_default_scale_is_one_over_sqrt_c",
        ),
    ),
    Mutation(
        "core-concatenation-phi-half-first",
        "nonlocal_core/reference.py",
        "        a = theta @ w_f[:half]  #",
        "        a = theta @ w_f[half:]  #",
        ("tests/core/test_reference.py::test_two_positions_concatenation_theta_half_first",),
    ),
    # Hostile input (tests/*/test_fuzz*.py): each fix the fuzzing suite forced, undone.
    Mutation(
        "save-leaves-its-temporary-file",
        "nonlocal_core/files.py",
        "        os.unlink(temporary)\n        raise\n",
        "        raise\n",
        (
            "tests/core/test_fuzz_files.py"
            "::test_an_interrupted_save_leaves_the_old_file_and_nothing_else",
        ),
    ),
    Mutation(
        "load-trusts-the-header",
        "nonlocal_core/io.py",
        '    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):',
        "    if False:",
        ("tests/core/test_fuzz_files.py::test_the_examples_of_the_issue_fail_cleanly",),
    ),
    Mutation(
        "weights-of-any-dtype",
        "nonlocal_core/weights.py",
        "        if not is_real_dtype(array.dtype):",
        "        if False:",
        ("tests/core/test_fuzz.py::test_weights_are_checked_before_use",),
    ),
    Mutation(
        "vector-reader-takes-any-entry",
        "nonlocal_core/vector_files.py",
        "    bad = next((i for i, v in enumerate(data) if type(v) not in kinds), None)",
        "    bad = None",
        ("tests/test_cli_fuzz.py::test_load_case_says_what_is_wrong[mask as 0/1]",),
    ),
    Mutation(
        "summary-takes-negative-counts",
        "conformance/nonlocal_conformance/summary.py",
        "        if type(value) is not int or value < 0:",
        "        if False:",
        (
            "tests/test_cli_fuzz.py::test_summary_says_what_is_wrong"
            '[{"totals": {"failed": -1}}-\'totals.failed\' is a number -1: expected an integer]',
        ),
    ),
    Mutation(
        "keras-converts-before-checking",
        "backends/nonlocal_keras/layer.py",
        "                args[position] = self._checked_argument(name, args[position])",
        "                pass",
        (
            "tests/keras/test_fuzz.py::test_string_and_object_arrays_of_numbers_are_rejected[string]",
        ),
        keras_backend="torch",
    ),
    Mutation(
        "keras-any-dtype-policy",
        "backends/nonlocal_keras/layer.py",
        '        _check_policy(self.dtype_policy, kwargs.get("dtype"))',
        "        pass",
        ("tests/keras/test_fuzz.py::test_constructor_rejects_a_non_floating_dtype_policy[int32]",),
        keras_backend="torch",
    ),
    Mutation(
        "w-z-on-a-channels-last-view",
        "backends/nonlocal_torch/block.py",
        "            y = y.contiguous()\n",
        "            pass\n",
        ("tests/torch/test_module.py::test_w_z_and_bn_run_in_the_layout_of_x[3]",),
    ),
    Mutation(
        "slowfast-formulation-softmax-over-queries",
        "backends/nonlocal_torch/formulations.py",
        "    attention = logits.softmax(dim=2)",
        "    attention = logits.softmax(dim=1)",
        (
            "tests/torch/test_sidebyside.py::test_formulation_is_our_block[slowfast_embedded-2d-full]",
        ),
    ),
    Mutation(
        "sorted-concatenation-misses-nan-keys",
        "backends/nonlocal_torch/strategies.py",
        '    y = torch.where(poisoned[:, None, None], float("nan"), y)\n',
        "",
        (
            "tests/torch/test_fuzz.py"
            "::test_a_nan_key_reaches_every_query_under_every_strategy[concatenation]",
        ),
    ),
    Mutation(
        "caffe2-riv-read-as-the-mean",
        "nonlocal_core/convert/layouts.py",
        '"rm": "running_mean", "riv": "running_var"}',
        '"rm": "running_var", "riv": "running_mean"}',
        (f"{SOURCE_TESTS}::test_converted_weights_compute_the_implementations_output",),
    ),
    Mutation(
        "timm-scaled-by-the-inner-width",
        "nonlocal_core/profiles.py",
        'logit_scale=in_channels**-0.5 if a.flag("use_scale") else False,',
        'logit_scale=None if a.flag("use_scale") else False,',
        (f"{SOURCE_TESTS}::test_converted_weights_compute_the_implementations_output",),
    ),
    Mutation(
        "mmcv-gaussian-scaled",
        "nonlocal_core/profiles.py",
        'logit_scale=False if mode == "gaussian" else scale,',
        "logit_scale=scale,",
        (f"{SOURCE_TESTS}::test_real_mmcv_modules",),
    ),
    Mutation(
        "slowfast-pools-after-the-projections",
        "nonlocal_core/profiles.py",
        '        pool_position="before_projection",\n        norm=norm,',
        '        pool_position="after_projection",\n        norm=norm,',
        (f"{SOURCE_TESTS}::test_real_pytorchvideo_modules",),
    ),
    Mutation(
        "checkpoint-reader-runs-any-global",
        "nonlocal_core/convert/readers.py",
        "        if method is None:\n            raise UnsafeCheckpointError(",
        "        if method is None:\n            return __import__(module).__dict__[name]\n"
        "            raise UnsafeCheckpointError(",
        ("tests/convert/test_readers.py::test_hostile_pickle_is_refused_and_nothing_runs",),
    ),
)


@dataclasses.dataclass
class Outcome:
    """What one run found: ``killed``, ``survived``, ``stale`` or ``error``, and why."""

    mutation: Mutation
    status: str
    detail: str = ""
    seconds: float = 0.0


def stale(mutation: Mutation, root: Path = ROOT) -> str | None:
    """Why `mutation` no longer applies to the source under `root`, or None when it does.

    Example:
        >>> stale(Mutation("m", "README.md", "no such text anywhere 42", "x", ()))
        "README.md: the text to mutate occurs 0 times, expected exactly once: 'no such text anywhere 42'"
    """  # noqa: E501
    path = root / mutation.path
    if not path.is_file():
        return f"{mutation.path}: no such file"
    count = path.read_text(encoding="utf-8").count(mutation.old)
    if count != 1:
        return (
            f"{mutation.path}: the text to mutate occurs {count} times, expected exactly once: "
            f"{mutation.old!r}"
        )
    return None


def copy_tree(root: Path, destination: Path) -> Path:
    """Copy `root`'s git-tracked and not-ignored files (symbolic links as links)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source, target = root / name, destination / name
        if source.is_symlink():  # e.g. the suite's golden_vectors, a link into spec/vectors
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(source), target)
        elif source.is_file():  # a tracked file deleted in the working tree is skipped
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def failed_ids(output: str) -> list[str]:
    """The node ids pytest's short summary (``-rf``) reports as failed."""
    ids = []
    for line in output.splitlines():
        if line.startswith("FAILED "):
            ids.append(line.removeprefix("FAILED ").split(" - ", 1)[0].strip())
    return ids


def caught(node_id: str, failed: list[str]) -> bool:
    """Whether `node_id` (a test, a parametrised test, or one parameter of it) failed."""
    return any(f == node_id or f.startswith((f"{node_id}[", f"{node_id}::")) for f in failed)


def packages_path(tree: Path) -> str:
    """A PYTHONPATH that imports `tree`'s own packages, ahead of the editable install (which
    maps them to this checkout).

    Example:
        >>> packages_path(Path("/t")).split(os.pathsep)
        ['/t', '/t/backends', '/t/conformance']
    """
    return os.pathsep.join(str(tree / folder) for folder in ("", "backends", "conformance"))


def run_tests(
    tree: Path, tests: tuple[str, ...], keras_backend: str | None
) -> subprocess.CompletedProcess:
    """Run pytest on `tests` in `tree`, importing `tree`'s packages."""
    env = {
        **os.environ,
        "PYTHONPATH": packages_path(tree),
        "HYPOTHESIS_STORAGE_DIRECTORY": str(tree / "build" / "hypothesis"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    if keras_backend:
        env["KERAS_BACKEND"] = keras_backend
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rf", *tests]
    return subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=900)


def run_mutation(mutation: Mutation, root: Path = ROOT) -> Outcome:
    """Apply `mutation` in a temporary copy of `root` and run its tests there."""
    started = time.monotonic()
    reason = stale(mutation, root)
    if reason:
        return Outcome(mutation, "stale", reason)
    with tempfile.TemporaryDirectory(prefix="mutant-") as scratch:
        tree = copy_tree(root, Path(scratch) / "repo")
        path = tree / mutation.path
        path.write_text(
            path.read_text(encoding="utf-8").replace(mutation.old, mutation.new),
            encoding="utf-8",
        )
        result = run_tests(tree, mutation.tests, mutation.keras_backend)
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    if result.returncode == 0:
        return Outcome(mutation, "survived", "every named test passed", seconds)
    if result.returncode != 1:
        return Outcome(mutation, "error", f"pytest exit {result.returncode}:\n{output[-3000:]}")
    missed = [t for t in mutation.tests if not caught(t, failed_ids(result.stdout))]
    if missed:
        return Outcome(mutation, "survived", f"still passing: {', '.join(missed)}", seconds)
    return Outcome(mutation, "killed", "", seconds)


def control(mutations: list[Mutation], root: Path = ROOT) -> list[str]:
    """Run every named test on an unmutated copy (one run per Keras backend): the failures."""
    problems = []
    by_backend: dict[str | None, list[str]] = {}
    for mutation in mutations:
        tests = by_backend.setdefault(mutation.keras_backend, [])
        tests += [t for t in mutation.tests if t not in tests]
    with tempfile.TemporaryDirectory(prefix="mutant-control-") as scratch:
        tree = copy_tree(root, Path(scratch) / "repo")
        for backend, tests in by_backend.items():
            result = run_tests(tree, tuple(tests), backend)
            if result.returncode != 0:
                output = (result.stdout + result.stderr)[-3000:]
                problems.append(
                    f"KERAS_BACKEND={backend}: pytest exit {result.returncode}\n{output}"
                )
    return problems


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only these")
    parser.add_argument("--jobs", type=int, default=1, help="mutants at a time (default 1)")
    parser.add_argument("--no-control", action="store_true", help="skip the unmutated run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutations: {', '.join(sorted(unknown))}")
    if args.list:
        for m in chosen:
            print(f"{m.name}\n  {m.path}: {m.old.strip()!r} -> {m.new.strip()!r}")
            print("".join(f"  must fail: {t}\n" for t in m.tests), end="")
        return 0
    started = time.monotonic()
    if not args.no_control:
        problems = control([m for m in chosen if stale(m) is None])
        if problems:
            print("CONTROL FAILED: the named tests fail without any mutation")
            print("\n".join(problems))
            return 1
        print(f"control: the named tests pass unmutated ({time.monotonic() - started:.0f} s)")
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        outcomes = []
        for outcome in pool.map(run_mutation, chosen):
            print(f"{outcome.status:>8}  {outcome.mutation.name} ({outcome.seconds:.0f} s)")
            if outcome.detail:
                print(f"          {outcome.detail}")
            outcomes.append(outcome)
    bad = [o for o in outcomes if o.status != "killed"]
    total = time.monotonic() - started
    if bad:
        names = ", ".join(f"{o.mutation.name} ({o.status})" for o in bad)
        print(f"mutations FAILED: {names}; {len(outcomes) - len(bad)} killed ({total:.0f} s)")
        return 1
    print(f"mutations passed: all {len(outcomes)} mutants killed ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
