"""The operator's block diagram (docs/assets/nonlocal-block.svg) is valid, self-contained SVG
that shows every stage of the block, and the operator page shows it with alt text and a caption.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SVG = ROOT / "docs" / "assets" / "nonlocal-block.svg"
PAGE = ROOT / "docs" / "operator.md"
NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def root() -> ET.Element:
    return ET.parse(SVG).getroot()  # raises on anything that is not well-formed XML


def _text(element: ET.Element) -> str:
    """All the text the figure shows, one string per <text> element, tspans joined."""
    return "\n".join(" ".join("".join(t.itertext()).split()) for t in element.iter(f"{NS}text"))


def test_the_diagram_is_svg_with_a_title_and_description(root):
    assert root.tag == f"{NS}svg"
    assert re.fullmatch(r"0 0 \d+ \d+", root.get("viewBox", ""))
    assert root.get("role") == "img"
    assert root.find(f"{NS}title").text.strip()
    assert len(root.find(f"{NS}desc").text.split()) > 50


def test_the_diagram_is_self_contained(root):
    # An <img> SVG may load nothing: no scripts, no raster or external images, no web fonts.
    tags = {element.tag.removeprefix(NS) for element in root.iter()}
    assert not tags & {"script", "image", "foreignObject", "use", "a"}
    for element in root.iter():
        for name, value in element.attrib.items():
            if name.endswith("href"):
                assert value.startswith("#"), (name, value)
    style = "".join(s.text or "" for s in root.iter(f"{NS}style"))
    assert "@import" not in style and "url(http" not in style and "@font-face" not in style
    assert root.get("font-family", "").endswith("sans-serif")


def test_labels_are_real_text(root):
    assert len(list(root.iter(f"{NS}text"))) >= 40
    # No text drawn as outlines: every <path> is an edge, an arrowhead or an operator glyph.
    for path in root.iter(f"{NS}path"):
        assert len(path.get("d", "")) < 80, "a long path is text converted to outlines"


@pytest.mark.parametrize(
    "label",
    [
        "input x",
        "(B, C, *S)",
        "context x̂",
        "θ: 1×1 conv",
        "C → C′",
        "φ: 1×1 conv",
        "g: 1×1 conv",
        "none in Gaussian",
        "max pool (optional)",
        "pairwise f(θ",
        "× 1/C(x)",
        "softmax over j: Gaussian, embedded Gaussian",
        "÷ N′",
        "dot product, concatenation",
        "θ: (B, N, C′)",
        "φ: (B, C′, N′)",
        "g: (B, N′, C′)",
        "a: (B, N, N′)",
        "matrix product",
        "Wz: 1×1 conv, C′ → C",
        "BatchNorm, γ = β = 0 at init",
        "+ x (residual)",
        "output z (B, C, *S)",
        "N = ∏S: query positions",
        "N′ = ∏S′: keys after pooling",
    ],
)
def test_the_diagram_shows_every_stage(root, label):
    assert label in _text(root)


def test_the_operator_page_shows_the_diagram_near_the_top():
    page = PAGE.read_text(encoding="utf-8")
    figure = re.search(r'<figure class="nl-figure".*?</figure>', page, re.S)
    assert figure, "no <figure> on the operator page"
    assert page.index(figure[0]) < page.index("## Notation")
    image = re.search(r"!\[([^\]]+)\]\(assets/nonlocal-block\.svg\)", figure[0])
    assert image and len(image[1].split()) > 30, "the diagram needs alt text that describes it"
    assert re.search(r"<figcaption[^>]*>\s*\S.*?</figcaption>", figure[0], re.S)
