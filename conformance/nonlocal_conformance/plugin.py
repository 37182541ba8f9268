"""pytest plugin entry point of the conformance suite (registered as ``pytest11``).

Adds ``--backend``, ``--device``, ``--dtype``, ``--vectors`` and ``--conformance-report``,
registers the Hypothesis profiles ``dev``, ``ci`` and ``thorough`` (select one with
``--hypothesis-profile``), and provides the ``conformance_suite`` fixture. Everything stays
inert unless tests of ``nonlocal_conformance.tests`` are collected, so other test runs need
none of these options.

Run it from a checkout or after ``pip install``::

    pytest conformance --backend=numpy --hypothesis-profile=ci
    pytest --pyargs nonlocal_conformance --backend=mypkg.nl:MyAdapter --dtype=float64
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

import nonlocal_core
from nonlocal_core.cli import output_folder

from .adapter import ALL_DTYPES
from .backends import ENV_VAR, BackendError, load_adapter
from .report import Report
from .suite import Suite, Tally
from .vectors import VectorCase, load_case, load_index

SUITE_VERSION = "1.0"
VECTORS_ENV_VAR = "NONLOCAL_VECTORS"
TESTS_PACKAGE = "nonlocal_conformance.tests"
HYPOTHESIS_HOME_ENV_VAR = "HYPOTHESIS_STORAGE_DIRECTORY"  # Hypothesis's own variable

_RELAXED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
# dev: quick local runs. ci: deterministic (derandomize: the same examples on every run and
# machine), no example database. thorough: many more examples, for releases and new backends.
settings.register_profile("dev", max_examples=10, deadline=None, suppress_health_check=_RELAXED)
settings.register_profile(
    "ci",
    max_examples=12,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=_RELAXED,
)
settings.register_profile(
    "thorough", max_examples=300, deadline=None, suppress_health_check=_RELAXED
)

_SUITE = pytest.StashKey["Suite | None"]()
_REPORT = pytest.StashKey["Report | None"]()
_NODEIDS = pytest.StashKey["set[str]"]()
_STARTED = pytest.StashKey[float]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nonlocal-conformance", "non-local block conformance suite")
    group.addoption(
        "--backend",
        default=None,
        help=f"implementation under test: numpy, torch, keras, keras-tensorflow, keras-jax, "
        f"keras-torch, mmcv, pytorchvideo, an entry-point name or package.module:AdapterClass "
        f"(default: ${ENV_VAR})",
    )
    group.addoption("--device", default="cpu", help="device to test on: cpu (default), cuda")
    group.addoption(
        "--dtype",
        default="float32",
        choices=ALL_DTYPES,
        help="dtype under test (default float32)",
    )
    group.addoption(
        "--vectors",
        default=None,
        help=f"golden-vector directory (default: ${VECTORS_ENV_VAR}, then spec/vectors of "
        "the checkout, then the copy inside the installed package)",
    )
    group.addoption(
        "--conformance-report",
        default=None,
        metavar="FILE",
        help="write the conformance report to FILE (.md: Markdown, else JSON)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "conformance: a check of the conformance suite")
    config.stash[_SUITE] = None
    config.stash[_REPORT] = None
    config.stash[_NODEIDS] = set()
    config.stash[_STARTED] = time.perf_counter()
    config.pluginmanager.register(_Recorder(config), "nonlocal-conformance-recorder")
    wants_suite = config.getoption("backend") or os.environ.get(ENV_VAR)
    if wants_suite and not config.getoption("hypothesis_profile", None):
        settings.load_profile("dev")
    if wants_suite and not os.environ.get(HYPOTHESIS_HOME_ENV_VAR):
        set_hypothesis_home_dir(hypothesis_home())
    if wants_suite:
        _check_paths(config)
        # pytest's default traceback prints every frame's arguments: the adapter's arrays in
        # full. The suite's messages say what failed; --tb=long still shows everything.
        if config.getoption("tbstyle", "auto") == "auto":
            config.option.tbstyle = "short"


def _check_paths(config: pytest.Config) -> None:
    """Usage errors, before anything runs, for a report path that cannot be written and for
    golden vectors named explicitly that are missing or damaged (a skip would hide them)."""
    report = config.getoption("conformance_report")
    if report:
        try:
            output_folder("a writable folder for the report")(str(Path(report).parent))
        except argparse.ArgumentTypeError as exc:
            raise pytest.UsageError(f"--conformance-report={report!r}: {exc}") from None
        if Path(report).is_dir():
            raise pytest.UsageError(
                f"--conformance-report={report!r} is a folder: expected a file name "
                "(.md for Markdown, else JSON)"
            )
    explicit = config.getoption("vectors") or os.environ.get(VECTORS_ENV_VAR)
    if explicit:
        source = "--vectors" if config.getoption("vectors") else f"${VECTORS_ENV_VAR}"
        try:
            load_index(explicit)
        except (OSError, ValueError) as exc:
            raise pytest.UsageError(
                f"{source}={explicit!r} is not a golden-vector folder: {exc}"
            ) from None


def hypothesis_home() -> Path:
    """Where the suite keeps Hypothesis's files (example database, caches): the user's cache.

    Hypothesis would otherwise write ``.hypothesis/`` into the working directory. Set
    ``$HYPOTHESIS_STORAGE_DIRECTORY`` to choose another place.

    Example:
        >>> hypothesis_home().parts[-2:]
        ('nonlocal-conformance', 'hypothesis')
    """
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "nonlocal-conformance" / "hypothesis"


def find_vectors(config: pytest.Config) -> Path | None:
    """The golden vectors: --vectors, $NONLOCAL_VECTORS, spec/vectors, or the package's copy."""
    explicit = config.getoption("vectors") or os.environ.get(VECTORS_ENV_VAR)
    if explicit:
        return Path(explicit)
    for candidate in (
        Path(config.rootpath) / "spec" / "vectors",
        Path(__file__).resolve().parents[2] / "spec" / "vectors",  # an editable checkout
        Path(__file__).resolve().parent / "golden_vectors",  # shipped inside the package
    ):
        if (candidate / "index.json").is_file():
            return candidate
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "golden_vector" not in metafunc.fixturenames:
        return
    directory = find_vectors(metafunc.config)
    if directory is None or not (directory / "index.json").is_file():
        where = directory or "spec/vectors (relative to the rootdir and to the checkout)"
        reason = f"no golden vectors found at {where}: pass --vectors=DIR or ${VECTORS_ENV_VAR}"
        param = pytest.param(None, marks=pytest.mark.skip(reason=reason), id="no-vectors")
        metafunc.parametrize("golden_vector", [param], indirect=True)
        return
    files = load_index(directory)
    params = [pytest.param(directory / name, id=Path(name).stem) for name in files]
    metafunc.parametrize("golden_vector", params, indirect=True)


@pytest.fixture
def golden_vector(request: pytest.FixtureRequest) -> VectorCase:
    """One golden vector, loaded from the file the parametrisation names."""
    return load_case(request.param)


def _is_conformance(item: pytest.Item) -> bool:
    module = getattr(item, "module", None)
    return module is not None and module.__name__.startswith(TESTS_PACKAGE + ".")


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    ours = [item for item in items if _is_conformance(item)]
    if not ours:
        return
    name = config.getoption("backend") or os.environ.get(ENV_VAR, "")
    try:
        adapter = load_adapter(name)
    except BackendError as exc:
        raise pytest.UsageError(f"nonlocal conformance suite: {exc}") from None
    suite = Suite(
        adapter,
        name,
        dtype=config.getoption("dtype"),
        device=config.getoption("device"),
        vectors_dir=find_vectors(config),
    )
    config.stash[_SUITE] = suite
    header = suite.header()
    header.update(
        suite_version=SUITE_VERSION,
        spec_version=nonlocal_core.SPEC_VERSION,
        hypothesis_profile=settings.get_current_profile_name(),
        vectors=str(suite.vectors_dir) if suite.vectors_dir else None,
    )
    config.stash[_REPORT] = Report(header=header)
    config.stash[_NODEIDS] = {item.nodeid for item in ours}
    for item in ours:
        item.add_marker(pytest.mark.conformance)


def pytest_report_collectionfinish(config: pytest.Config) -> list[str]:
    report = config.stash.get(_REPORT, None)
    if report is None:
        return []
    h = report.header
    versions = ", ".join(f"{k} {v}" for k, v in h["versions"].items())
    precision = ", ".join(f"{k}={v}" for k, v in h["precision"].items())
    options = "".join(f", {k}={v}" for k, v in h["options"].items())
    return [
        f"nonlocal conformance: backend {h['backend']} (adapter {h['adapter_name']!r}, "
        f"{h['adapter']}{options}), {versions}",
        f"  device {h['device']}, dtype {h['dtype']}, precision {precision}, "
        f"hypothesis profile {h['hypothesis_profile']}, vectors {h['vectors']}",
    ]


@pytest.fixture(scope="session")
def conformance_suite(request: pytest.FixtureRequest) -> Suite:
    """The `Suite` of this run (only inside the conformance suite)."""
    suite = request.config.stash.get(_SUITE, None)
    if suite is None:
        raise pytest.UsageError(
            "conformance_suite is only available to the tests of nonlocal_conformance.tests"
        )
    return suite


def failures_of(exc: BaseException) -> list[dict[str, str | None]]:
    """One ``{"error", "case"}`` per distinct failure: the leaves of an exception group
    (Hypothesis raises one when it finds several distinct bugs), each with its first line
    and the falsifying case `Suite.check` attached.

    Example:
        >>> group = ExceptionGroup("2 distinct failures", [AssertionError("z: 3 of 8 entries"),
        ...                                                 RuntimeError("inplace\\nmore")])
        >>> [f["error"] for f in failures_of(group)]
        ['AssertionError: z: 3 of 8 entries', 'RuntimeError: inplace']
    """
    # BaseExceptionGroup is built in from Python 3.11 (the `exceptiongroup` backport before).
    subs = getattr(exc, "exceptions", None)
    if isinstance(subs, (tuple, list)) and all(isinstance(e, BaseException) for e in subs):
        return [leaf for sub in subs for leaf in failures_of(sub)]
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    error = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return [{"error": error[:500], "case": getattr(exc, "conformance_case", None)}]


def _detail(report: pytest.TestReport) -> str:
    if report.skipped:
        if isinstance(report.longrepr, tuple):
            return str(report.longrepr[2]).removeprefix("Skipped: ")
        return str(report.longrepr)
    crash = getattr(report.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else str(report.longrepr)
    return message.strip().splitlines()[0] if message.strip() else ""


class _Recorder:
    """Collects outcomes of the conformance tests into the run's `Report`: per test, the
    outcome, the `Tally` of `Suite.check` (examples run, draws declined) and every failure."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.failures: dict[str, list[dict[str, str | None]]] = {}

    def _ours(self, nodeid: str) -> bool:
        return self.config.stash.get(_REPORT, None) is not None and (
            nodeid in self.config.stash[_NODEIDS]
        )

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        suite = self.config.stash.get(_SUITE, None)
        if suite is not None and self._ours(item.nodeid):
            suite.tally = Tally()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        outcome = yield
        report = outcome.get_result()
        if self._ours(item.nodeid) and report.failed and call.excinfo is not None:
            self.failures[item.nodeid] = failures_of(call.excinfo.value)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not self._ours(report.nodeid):
            return
        if report.when == "call" or report.outcome != "passed":
            suite = self.config.stash[_SUITE]
            tally = suite.tally if report.when == "call" else Tally()
            failures = self.failures.pop(report.nodeid, [])
            detail = "" if report.passed else _detail(report)
            if failures and len(failures) > 1:
                detail = f"{len(failures)} distinct failures: " + "; ".join(
                    f["error"] for f in failures
                )
            self.config.stash[_REPORT].add(
                report.nodeid,
                report.outcome,
                report.duration,
                detail,
                examples=tally.examples if (tally.examples or tally.declined) else None,
                declined=dict(tally.declined),
                failures=failures,
            )

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        report = self.config.stash.get(_REPORT, None)
        path = self.config.getoption("conformance_report")
        if report is None or not path:
            return
        report.duration = time.perf_counter() - self.config.stash[_STARTED]
        report.write(path)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    report = config.stash.get(_REPORT, None)
    if report is None:
        return
    totals, draws = report.totals(), report.draws()
    options = "".join(f", {k}={v}" for k, v in report.header["options"].items())
    terminalreporter.write_line(
        f"nonlocal conformance [{report.header['backend']}, {report.header['dtype']}, "
        f"{report.header['device']}{options}]: {totals['passed']} passed, "
        f"{totals['failed']} failed, {totals['skipped']} skipped; {draws['examples']} drawn "
        f"examples run, {draws['declined']} declined"
    )
    path = config.getoption("conformance_report")
    if path:
        terminalreporter.write_line(f"conformance report: {path}")
