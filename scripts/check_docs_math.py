"""Open built documentation pages in headless Chromium and check that every formula rendered.

    python scripts/check_docs_math.py [--build] [--site-dir build/site]
                                      [--page operator/ ... | --all]
                                      [--screenshot build/docs-check/PAGE.png]
                                      [--screenshot-dir DIR] [--window-size 1280,2000]
                                      [--require-browser]

A page is named by its path in the site, as a directory or a file: ``operator/``, ``operator``,
``operator/index.html``, and for the home page ``""``, ``/`` or ``index.html``. ``--all``
checks every page of the site.

The site is served from 127.0.0.1 (a random free port) and the browser resolves no other host,
so a formula that needed the network would fail here. For each page the check compares the
static HTML (the TeX that pymdownx.arithmatex wrote) with the DOM after scripts ran:

- every ``.arithmatex`` element now holds KaTeX output (``.katex``, and ``.katex-display``
  for display math), none is left as raw TeX;
- no ``.katex-error`` element exists (KaTeX's marker for TeX it could not parse);
- no ``$`` is left visible in the text outside code and formulas: TeX that arithmatex did not
  take as math (``$x = $`` with a space before the closing ``$``, an unpaired ``$``) shows up
  as raw TeX. A dollar meant literally belongs in a code span (``$HOME``);
- no inline code span holds TeX between dollars (``$\\phi$`` in backticks shows as code);
- every file the page requested from the site was found (KaTeX fonts included, on a page with
  math).

It also saves a screenshot of the first page (of every page with ``--screenshot-dir``).
Without Chromium (Debian's ``chromium`` package) it prints ``SKIPPED: ...`` and exits 0, or 2
with ``--require-browser``.
Exit status 1 means a check failed.

Example:
    >>> static = '<div class="arithmatex">\\\\[x\\\\]</div>'
    >>> dom = ('<div class="arithmatex" data-katex-rendered="true"><span class="katex-display">'
    ...        '<span class="katex">x</span></span></div>')
    >>> analyse(static, dom).problems
    []
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import html.parser
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Flags from the project's notes: no sandbox (root, containers), no GPU, nothing phoning home.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    # Every host but the local server resolves to nothing: the page must render offline.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)


# DOM analysis -----------------------------------------------------------------------------


@dataclasses.dataclass
class _Math:
    display: bool
    katex: bool = False  # holds a .katex element
    katex_display: bool = False  # holds a .katex-display element


class _MathParser(html.parser.HTMLParser):
    """Collects a document's ``.arithmatex`` elements, what they contain, and stray dollars."""

    VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
    # Text in these is code or not shown as prose, so a "$" there is meant (shell variables).
    NOT_PROSE = frozenset("code pre kbd samp script style template noscript textarea".split())
    # KaTeX's output keeps the TeX source (in its MathML annotation): a "$" there is math.
    MATH_CLASSES = frozenset({"arithmatex", "katex", "katex-display", "katex-error"})
    # A TeX command between dollars: a formula someone put in backticks, never a shell line.
    TEX_BETWEEN_DOLLARS = re.compile(r"\$[^$]*\\[A-Za-z][^$]*\$")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.formulas: list[_Math] = []
        self.errors = 0
        self.stray_dollars: list[str] = []  # the visible text around each stray "$"
        self.tex_in_code: list[str] = []  # inline code spans that hold a formula
        self._code: list[str] | None = None  # the text of the inline code span being read
        self._stack: list[tuple[str, _Math | None, bool]] = []  # (tag, formula it opens, prose)

    def _current(self) -> _Math | None:
        for _, formula, _ in reversed(self._stack):
            if formula is not None:
                return formula
        return None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = set((dict(attrs).get("class") or "").split())
        if "katex-error" in classes:
            self.errors += 1
        current = self._current()
        if current is not None:
            current.katex |= "katex" in classes
            current.katex_display |= "katex-display" in classes
        opened = None
        if "arithmatex" in classes:
            opened = _Math(display=(tag == "div"))
            self.formulas.append(opened)
        if tag == "code" and all(open_tag != "pre" for open_tag, _, _ in self._stack):
            self._code = []
        if tag not in self.VOID:
            prose = tag not in self.NOT_PROSE and not classes & self.MATH_CLASSES
            self._stack.append((tag, opened, prose and self._in_prose()))

    def _in_prose(self) -> bool:
        return not self._stack or self._stack[-1][2]

    def handle_data(self, data: str) -> None:
        if self._code is not None:
            self._code.append(data)
        if "$" in data and self._in_prose():
            # One entry per text node, however many dollars it holds: "$x = $" is one mistake.
            self.stray_dollars.append(" ".join(data.split())[:120])

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "code" and self._code is not None:
            code = "".join(self._code)
            if self.TEX_BETWEEN_DOLLARS.search(code):
                self.tex_in_code.append(code[:120])
            self._code = None
        # Pop to the matching open tag (tolerates the unclosed tags HTML allows).
        for index in range(len(self._stack) - 1, -1, -1):
            if self._stack[index][0] == tag:
                del self._stack[index:]
                return


def _parse(document: str) -> _MathParser:
    parser = _MathParser()
    parser.feed(document)
    parser.close()
    return parser


@dataclasses.dataclass
class MathReport:
    """What one page's check found."""

    formulas: int
    display: int
    rendered: int
    errors: int
    problems: list[str]
    stray_dollars: int = 0


def stray_dollars(document: str) -> list[str]:
    """Where `document` shows raw TeX: a ``$`` in text, TeX between dollars in a code span.

    Works on static HTML and on a rendered DOM alike; a page is clean when this is empty.

    Example:
        >>> stray_dollars('<p>with <code>$HOME</code> and <span class="arithmatex">\\\\(x\\\\)'
        ...               '</span>, but $\\\\phi = $ pooled</p>')
        [', but $\\\\phi = $ pooled']
    """
    parsed = _parse(document)
    return parsed.stray_dollars + parsed.tex_in_code


def analyse(static_html: str, rendered_dom: str) -> MathReport:
    """Compare a page's static HTML with its DOM after scripts ran (see the module docstring).

    A page without any formula is fine: it is still checked for stray dollars.

    Example:
        >>> analyse('<span class="arithmatex">\\\\(x\\\\)</span>',
        ...         '<span class="arithmatex">\\\\(x\\\\)</span>').problems
        ['1 of 1 formulas were not rendered by KaTeX (still raw TeX)']
    """
    before, after = _parse(static_html), _parse(rendered_dom)
    problems: list[str] = []
    if len(after.formulas) != len(before.formulas):
        problems.append(
            f"the page had {len(before.formulas)} formulas, the rendered DOM has "
            f"{len(after.formulas)}"
        )
    rendered = sum(f.katex and (f.katex_display or not f.display) for f in after.formulas)
    if rendered != len(after.formulas):
        problems.append(
            f"{len(after.formulas) - rendered} of {len(after.formulas)} formulas were not "
            "rendered by KaTeX (still raw TeX)"
        )
    if after.errors:
        problems.append(f"{after.errors} KaTeX errors (.katex-error): TeX KaTeX cannot parse")
    for text in after.stray_dollars:
        problems.append(f'a stray $ shows as text (raw TeX arithmatex did not take): "{text}"')
    for code in after.tex_in_code:
        problems.append(f'TeX shows as code (a formula in backticks): "{code}"')
    display = sum(f.display for f in before.formulas)
    stray = len(after.stray_dollars) + len(after.tex_in_code)
    return MathReport(len(before.formulas), display, rendered, after.errors, problems, stray)


# Serving and the browser ------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the site and records (status, path) of each request instead of logging it."""

    requests: list[tuple[int, str]]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        self.requests.append((code, self.path))
        super().send_response(code, message)


@contextlib.contextmanager
def serve(site: Path) -> Iterator[tuple[str, list[tuple[int, str]]]]:
    """Serve `site` on 127.0.0.1; yields (base URL, the list requests are recorded in)."""
    requests: list[tuple[int, str]] = []
    handler = type("Handler", (_QuietHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(site))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()


def find_browser() -> str | None:
    """The Chromium executable: ``$CHROMIUM`` if set, else the first of `BROWSERS` on PATH."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def chromium(browser: str, url: str, *extra: str, timeout: float = 120) -> str:
    """Run headless Chromium on `url` with `extra` flags; returns its stdout."""
    with tempfile.TemporaryDirectory(prefix="docs-check-chromium-") as profile:
        command = [
            browser,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=15000",
            *extra,
            url,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{browser} exited {result.returncode}:\n{result.stderr[-2000:]}")
    return result.stdout


def build_site(site: Path) -> None:
    """``mkdocs build --strict`` into `site` (the same command as ``./dev docs``)."""
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        check=True,
    )


def page_file(page: str) -> str:
    """The HTML file of `page` (a directory or a file path), relative to the site's root.

    Example:
        >>> [page_file(p) for p in ("", "/", "index.html", "404.html")]
        ['index.html', 'index.html', 'index.html', '404.html']
        >>> {page_file(p) for p in ("operator", "operator/", "/operator/index.html")}
        {'operator/index.html'}
    """
    path = page.strip("/")
    if path.endswith(".html"):
        return path
    return f"{path}/index.html" if path else "index.html"


def site_pages(site: Path) -> list[str]:
    """Every page of a built site as a directory path (``""`` is the home page)."""
    pages = []
    for path in site.rglob("index.html"):
        relative = path.parent.relative_to(site).as_posix()
        if not relative.startswith("assets/"):
            pages.append("" if relative == "." else relative + "/")
    return sorted(pages)  # "" first: the home page


def screenshot_name(page: str) -> str:
    """A file name for the screenshot of `page`: ``operator/`` -> ``operator.png``."""
    stem = page_file(page).removesuffix(".html").removesuffix("/index").removesuffix("index")
    return (stem.replace("/", "-") or "index") + ".png"


def check_page(
    browser: str,
    site: Path,
    page: str,
    screenshot: Path | None,
    window_size: str = "1280,2000",
) -> MathReport:
    """Render one page of `site` (e.g. ``operator/`` or ``index.html``) and analyse it."""
    file = site / page_file(page)
    if not file.is_file():
        return MathReport(0, 0, 0, 0, [f"no such page in the site: {file}"])
    static = file.read_text(encoding="utf-8")
    with serve(site) as (base, requests):
        url = base + page_file(page)
        dom = chromium(browser, url, "--dump-dom")
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            chromium(
                browser,
                url,
                f"--screenshot={screenshot.resolve()}",
                f"--window-size={window_size}",
            )
    report = analyse(static, dom)
    missing = sorted({path for status, path in requests if status >= 400})
    if missing:
        report.problems.append(f"the site did not serve {missing}")
    if report.formulas and not any("KaTeX_Main-Regular" in path for _, path in requests):
        report.problems.append("the KaTeX fonts were never requested")
    return report


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site-dir", type=Path, default=ROOT / "build" / "site")
    parser.add_argument("--build", action="store_true", help="build the site first")
    parser.add_argument(
        "--page", action="append", help="page path inside the site (default: operator/)"
    )
    parser.add_argument("--all", action="store_true", help="check every page of the site")
    parser.add_argument(
        "--screenshot",
        type=Path,
        help="where the screenshot of the first page goes (default: build/docs-check/PAGE.png)",
    )
    parser.add_argument(
        "--screenshot-dir", type=Path, help="save a screenshot of every page here, too"
    )
    parser.add_argument(
        "--window-size", default="1280,2000", help="browser window for screenshots: WIDTH,HEIGHT"
    )
    parser.add_argument("--require-browser", action="store_true", help="fail without Chromium")
    args = parser.parse_args(argv)
    if args.all and args.page:
        parser.error("--all and --page exclude each other")

    browser = find_browser()
    if browser is None:
        print(
            "SKIPPED: no Chromium found (tried $CHROMIUM, " + ", ".join(BROWSERS) + "); "
            "install Debian's package: apt-get install -y chromium"
        )
        return 2 if args.require_browser else 0
    if args.build or not (args.site_dir / "index.html").is_file():
        build_site(args.site_dir)
    pages = site_pages(args.site_dir) if args.all else args.page or ["operator/"]
    if args.screenshot is None:
        args.screenshot = ROOT / "build" / "docs-check" / screenshot_name(pages[0])

    failed = False
    for number, page in enumerate(pages):
        shot = args.screenshot if number == 0 else None
        if args.screenshot_dir is not None:
            shot = args.screenshot_dir / screenshot_name(page)
        report = check_page(browser, args.site_dir, page, shot, args.window_size)
        if number == 0 and shot != args.screenshot and shot.is_file():
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, args.screenshot)
        status = "FAILED" if report.problems else "ok"
        print(
            f"{page or '/'}: {report.formulas} formulas ({report.display} display, "
            f"{report.formulas - report.display} inline), {report.rendered} rendered by KaTeX, "
            f"{report.errors} errors, {report.stray_dollars} stray $: {status}"
        )
        for problem in report.problems:
            print(f"  - {problem}")
        failed |= bool(report.problems)
    if not failed:
        print(f"screenshot: {args.screenshot}")
        if args.screenshot_dir is not None:
            print(f"screenshots of every page: {args.screenshot_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
