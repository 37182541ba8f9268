"""Open built documentation pages in headless Chromium and check that every formula rendered.

    python scripts/check_docs_math.py [--build] [--site-dir build/site] [--page operator/]
                                      [--screenshot build/docs-check/operator.png]
                                      [--require-browser]

The site is served from 127.0.0.1 (a random free port) and the browser resolves no other host,
so a formula that needed the network would fail here. For each page the check compares the
static HTML (the TeX that pymdownx.arithmatex wrote) with the DOM after scripts ran:

- the page has at least one formula (a page without math checks nothing);
- every ``.arithmatex`` element now holds KaTeX output (``.katex``, and ``.katex-display``
  for display math), none is left as raw TeX;
- no ``.katex-error`` element exists (KaTeX's marker for TeX it could not parse);
- every file the page requested from the site was found (KaTeX fonts included).

It also saves a screenshot of the first page. Without Chromium (Debian's ``chromium``
package) it prints ``SKIPPED: ...`` and exits 0, or 2 with ``--require-browser``.
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
    """Collects the ``.arithmatex`` elements of a document and what they contain."""

    VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.formulas: list[_Math] = []
        self.errors = 0
        self._stack: list[tuple[str, _Math | None]] = []  # (tag, formula it opens)

    def _current(self) -> _Math | None:
        for _, formula in reversed(self._stack):
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
        if tag not in self.VOID:
            self._stack.append((tag, opened))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
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


def analyse(static_html: str, rendered_dom: str) -> MathReport:
    """Compare a page's static HTML with its DOM after scripts ran (see the module docstring).

    Example:
        >>> analyse('<span class="arithmatex">\\\\(x\\\\)</span>',
        ...         '<span class="arithmatex">\\\\(x\\\\)</span>').problems
        ['1 of 1 formulas were not rendered by KaTeX (still raw TeX)']
    """
    before, after = _parse(static_html), _parse(rendered_dom)
    problems: list[str] = []
    if not before.formulas:
        problems.append("the static page has no formula: nothing to check (wrong page?)")
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
    display = sum(f.display for f in before.formulas)
    return MathReport(len(before.formulas), display, rendered, after.errors, problems)


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


def check_page(browser: str, site: Path, page: str, screenshot: Path | None) -> MathReport:
    """Render one page of `site` (e.g. ``operator/``) and analyse it."""
    static = (site / page / "index.html").read_text(encoding="utf-8")
    with serve(site) as (base, requests):
        dom = chromium(browser, base + page, "--dump-dom")
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            chromium(
                browser,
                base + page,
                f"--screenshot={screenshot.resolve()}",
                "--window-size=1280,2000",
            )
    report = analyse(static, dom)
    missing = sorted({path for status, path in requests if status >= 400})
    if missing:
        report.problems.append(f"the site did not serve {missing}")
    if not any("KaTeX_Main-Regular" in path for _, path in requests):
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
    parser.add_argument(
        "--screenshot", type=Path, default=ROOT / "build" / "docs-check" / "operator.png"
    )
    parser.add_argument("--require-browser", action="store_true", help="fail without Chromium")
    args = parser.parse_args(argv)
    pages = args.page or ["operator/"]

    browser = find_browser()
    if browser is None:
        print(
            "SKIPPED: no Chromium found (tried $CHROMIUM, " + ", ".join(BROWSERS) + "); "
            "install Debian's package: apt-get install -y chromium"
        )
        return 2 if args.require_browser else 0
    if args.build or not (args.site_dir / pages[0] / "index.html").is_file():
        build_site(args.site_dir)

    failed = False
    for number, page in enumerate(pages):
        shot = args.screenshot if number == 0 else None
        report = check_page(browser, args.site_dir, page, shot)
        status = "FAILED" if report.problems else "ok"
        print(
            f"{page}: {report.formulas} formulas ({report.display} display, "
            f"{report.formulas - report.display} inline), {report.rendered} rendered by KaTeX, "
            f"{report.errors} errors: {status}"
        )
        for problem in report.problems:
            print(f"  - {problem}")
        failed |= bool(report.problems)
    if not failed:
        print(f"screenshot: {args.screenshot}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
