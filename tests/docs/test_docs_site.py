"""The site builds offline-clean, every page has content, versions and plots are current.

The site is built once per module with the CI command (``mkdocs build --strict``) into a
temporary directory; the browser check runs on it when Chromium is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import nonlocal_core

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
KATEX = DOCS / "assets" / "katex"
KATEX_VERSION = "0.19.1"
# XML namespace names are identifiers, not addresses anything is fetched from.
NAMESPACES = {"http://www.w3.org/1998/Math/MathML", "http://www.w3.org/2000/svg"}

sys.path.insert(0, str(ROOT / "scripts"))
import check_docs_math  # noqa: E402
import plot_benchmarks  # noqa: E402


class _Loader(yaml.SafeLoader):
    """The safe loader plus MkDocs's ``!relative`` tag (read as its plain value)."""


_Loader.add_constructor("!relative", lambda loader, node: loader.construct_scalar(node))


def _mkdocs_config() -> dict:
    return yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)


def _nav_pages(nav) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_site_assets_are_local():
    config = _mkdocs_config()
    assert config["theme"]["font"] is False, "Material would fetch Google Fonts"
    for asset in config["extra_css"] + config["extra_javascript"]:
        assert "://" not in asset and (DOCS / asset).is_file(), asset
    for path in [*DOCS.rglob("*.js"), *DOCS.rglob("*.css"), *DOCS.rglob("*.md")]:
        urls = set(re.findall(r"https?://[^\s\"')<>]+", path.read_text(encoding="utf-8")))
        local = {u for u in urls if u.startswith(("http://127.0.0.1", "http://localhost"))}
        assert urls - NAMESPACES - local == set(), f"{path.relative_to(ROOT)} names URLs"


def test_katex_is_vendored_whole():
    assert f'version:"{KATEX_VERSION}"' in (KATEX / "katex.min.js").read_text(encoding="utf-8")
    assert f"KaTeX {KATEX_VERSION}" in (KATEX / "README.txt").read_text(encoding="utf-8")
    assert "MIT License" in (KATEX / "LICENSE").read_text(encoding="utf-8")
    css = (KATEX / "katex.min.css").read_text(encoding="utf-8")
    fonts = set(re.findall(r"url\((fonts/[^)]+\.woff2)\)", css))
    assert len(fonts) == 20
    assert {f for f in fonts if not (KATEX / f).is_file()} == set()


def test_every_page_in_the_nav_has_content():
    pages = _nav_pages(_mkdocs_config()["nav"])
    assert {"operator.md", "conformance.md", "performance.md", "changelog.md"} <= set(pages)
    for page in pages:
        text = (DOCS / page).read_text(encoding="utf-8")
        assert not re.search(r"\b(TBD|TODO|FIXME)\b", text), page
        words = len(re.sub(r"^:::.*$", "", text, flags=re.M).split())
        minimum = 10 if page.startswith("api/") else 150
        assert words >= minimum, f"{page} has {words} words"


def test_built_pages_load_nothing_from_the_network(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 10
    for page in pages:
        text = page.read_text(encoding="utf-8")
        remote = re.findall(
            r"<(?:script|link|img|iframe)\b[^>]*(?:src|href)=\"(?:https?:)?//", text
        )
        assert remote == [], f"{page.relative_to(site)} loads {remote}"


def test_api_reference_renders_docstring_examples(site):
    html = (site / "api" / "core" / "index.html").read_text(encoding="utf-8")
    assert "nonlocal_forward" in html and "NonLocalConfig" in html
    # The "Example:" sections must arrive as code, not as Markdown with "&gt;&gt;&gt;" quotes.
    assert html.count("&gt;&gt;&gt;") >= 20 and "<blockquote>" not in html


def test_the_operator_page_shows_the_block_diagram(site):
    html = (site / "operator" / "index.html").read_text(encoding="utf-8")
    image = re.search(r'<img alt="([^"]+)" src="\.\./assets/nonlocal-block\.svg"', html)
    assert image and "W_z" in image[1], "the diagram is missing or has no alt text"
    assert (site / "assets" / "nonlocal-block.svg").is_file()
    assert re.search(r"<figcaption>\s*The non-local block", html)


def test_changelog_names_the_current_versions():
    text = (DOCS / "changelog.md").read_text(encoding="utf-8")
    assert f"**{nonlocal_core.SPEC_VERSION}**" in text
    assert f"**{nonlocal_core.__version__}**" in text
    assert f"## {nonlocal_core.__version__} " in text
    plugin = importlib.import_module("nonlocal_conformance.plugin")
    if hasattr(plugin, "SUITE_VERSION"):  # absent until the suite lands
        assert f"**{plugin.SUITE_VERSION}**" in text


def test_performance_plots_and_tables_are_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "plot_benchmarks.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout
    page = (DOCS / "performance.md").read_text(encoding="utf-8")
    perf = DOCS / "assets" / "perf"
    names = [p.stem for p in perf.glob("*.csv")]
    names += [p.name.removesuffix(".bench.json") for p in perf.glob("*.bench.json")]
    names += [p.name.removesuffix(".kerasbench.json") for p in perf.glob("*.kerasbench.json")]
    assert names, "the performance page has no results"
    for name in names:
        assert f'--8<-- "docs/_snippets/perf-{name}.md"' in page, name
        assert f"assets/perf/{name}.svg" in page, name
    for csv_path in perf.glob("*.csv"):
        title, rows = plot_benchmarks.read(csv_path)
        assert title and rows


# The browser check -----------------------------------------------------------------------

RENDERED_DISPLAY = (
    '<div class="arithmatex"><span class="katex-display"><span class="katex">x</span></span></div>'
)


def test_math_analysis_accepts_rendered_formulas():
    static = '<p><span class="arithmatex">\\(a\\)</span></p><div class="arithmatex">\\[x\\]</div>'
    dom = f'<p><span class="arithmatex"><span class="katex">a</span></span></p>{RENDERED_DISPLAY}'
    report = check_docs_math.analyse(static, dom)
    assert (report.formulas, report.display, report.rendered, report.problems) == (2, 1, 2, [])


@pytest.mark.parametrize(
    ("dom", "problem"),
    [
        ('<div class="arithmatex">\\[x\\]</div>', "not rendered"),
        ('<div class="arithmatex"><span class="katex">x</span></div>', "not rendered"),
        (
            RENDERED_DISPLAY.replace('"katex">x', '"katex"><span class="katex-error">x</span>'),
            "errors",
        ),
        ("<p>gone</p>", "the rendered DOM has 0"),
    ],
    ids=["raw-tex", "display-rendered-inline", "katex-error", "formula-lost"],
)
def test_math_analysis_reports_failures(dom, problem):
    report = check_docs_math.analyse('<div class="arithmatex">\\[x\\]</div>', dom)
    assert any(problem in p for p in report.problems), report.problems


def test_a_page_without_math_is_checked_for_stray_dollars_only():
    report = check_docs_math.analyse("<p>text</p>", "<p>text</p>")
    assert (report.formulas, report.problems) == (0, [])
    report = check_docs_math.analyse("<p>costs $5</p>", "<p>costs $5</p>")
    assert report.stray_dollars == 1 and "stray $" in report.problems[0]


# What arithmatex leaves as text when it does not take a "$...$" as math.
@pytest.mark.parametrize(
    "html",
    [
        "<p>use $\\theta = x$, $\\phi = $ pooled $x$</p>",  # space before the closing $
        "<td>a $k = $ fan-in</td>",
        "<li><p>unpaired $ in a list</p></li>",
        "<p>in a code span: <code>$\\hat{x}_j$</code></p>",
        "<p><code>see <span>$\\phi$</span></code></p>",  # inline code with markup inside
    ],
    ids=["space-before-closing", "table-cell", "unpaired", "tex-in-code", "tex-in-code-markup"],
)
def test_stray_dollars_are_found(html):
    assert check_docs_math.stray_dollars(html), html
    report = check_docs_math.analyse(html, html)
    assert report.stray_dollars == 1 and any("TeX" in p for p in report.problems), report


@pytest.mark.parametrize(
    "html",
    [
        "<p>set <code>$NONLOCAL_BACKEND</code> or <code>$OUT</code></p>",
        "<pre><code>echo $HOME; printf '$\\phi$'</code></pre>",
        '<div class="highlight"><pre><span>$</span> <span>$PY -m pytest</span></pre></div>',
        "<script>var document$ = 1;</script><style>a::after { content: '$'; }</style>",
        '<span class="arithmatex"><span class="katex"><annotation>\\$x</annotation></span></span>',
        "<p>no dollar at all</p>",
    ],
    ids=["env-vars-in-code", "code-block", "highlighted-block", "script-style", "katex", "none"],
)
def test_meant_dollars_are_not_stray(html):
    assert check_docs_math.stray_dollars(html) == []


@pytest.mark.parametrize(
    ("page", "file"),
    [
        ("", "index.html"),
        ("/", "index.html"),
        ("index.html", "index.html"),
        ("operator", "operator/index.html"),
        ("operator/", "operator/index.html"),
        ("api/core/index.html", "api/core/index.html"),
    ],
)
def test_pages_are_named_as_directories_or_files(page, file):
    assert check_docs_math.page_file(page) == file


def test_a_missing_page_is_reported_not_a_crash(tmp_path):
    (tmp_path / "index.html").write_text("<p>home</p>", encoding="utf-8")
    # The page is looked up before any browser starts.
    report = check_docs_math.check_page("no-browser-needed", tmp_path, "nosuch/", None)
    assert report.problems == [f"no such page in the site: {tmp_path / 'nosuch' / 'index.html'}"]


def test_every_built_page_is_found_and_shows_no_stray_dollar(site):
    pages = check_docs_math.site_pages(site)
    assert {"", "operator/", "conformance/", "api/core/"} <= set(pages)
    assert not any(p.startswith("assets") for p in pages)
    # The static HTML already shows what arithmatex left as text; the browser check
    # repeats this on the rendered DOM where Chromium is installed.
    stray = {}
    for page in pages:
        html = (site / check_docs_math.page_file(page)).read_text(encoding="utf-8")
        if found := check_docs_math.stray_dollars(html):
            stray[page] = found
    assert stray == {}


def test_the_browser_check_skips_cleanly_without_chromium(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CHROMIUM", raising=False)
    assert check_docs_math.main(["--site-dir", str(tmp_path)]) == 0
    assert "SKIPPED: no Chromium found" in capsys.readouterr().out
    assert check_docs_math.main(["--site-dir", str(tmp_path), "--require-browser"]) == 2


@pytest.mark.skipif(
    check_docs_math.find_browser() is None,
    reason="Chromium is not installed (apt-get install -y chromium): browser check not run",
)
def test_every_formula_renders_in_a_browser(site, tmp_path):
    shot = tmp_path / "operator.png"
    pages = ["operator/", "index.html", "conformance", "performance/"]
    arguments = ["--site-dir", str(site), "--screenshot", str(shot)]
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_docs_math.py"), *arguments]
        + [f"--page={p}" for p in pages],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert result.stdout.count(": ok") == len(pages)
    assert shot.stat().st_size > 10_000  # a real screenshot, not an empty image


def _griffe_hook():
    spec = importlib.util.spec_from_file_location(
        "griffe_examples", DOCS / "_hooks" / "griffe_examples.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "module", [check_docs_math, plot_benchmarks, _griffe_hook()], ids=lambda m: m.__name__
)
def test_script_docstring_examples(module):
    import doctest

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
