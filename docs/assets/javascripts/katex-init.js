// Render every formula that pymdownx.arithmatex (generic mode) left in the page with the
// vendored KaTeX: inline math is "\( ... \)" in a span, display math "\[ ... \]" in a div.
// throwOnError is off so a bad formula shows as a red .katex-error element, which
// scripts/check_docs_math.py looks for, instead of silently stopping the other formulas.
(function () {
  "use strict";

  function stripDelimiters(text) {
    var t = text.trim();
    if ((t.startsWith("\\(") && t.endsWith("\\)")) || (t.startsWith("\\[") && t.endsWith("\\]"))) {
      return t.slice(2, -2);
    }
    return t;
  }

  function renderAll(root) {
    var nodes = root.querySelectorAll(".arithmatex");
    for (var i = 0; i < nodes.length; i++) {
      var node = nodes[i];
      if (node.getAttribute("data-katex-rendered") === "true") {
        continue;
      }
      katex.render(stripDelimiters(node.textContent), node, {
        displayMode: node.tagName === "DIV",
        throwOnError: false,
        strict: "warn",
      });
      node.setAttribute("data-katex-rendered", "true");
    }
  }

  // Material's instant navigation swaps page content without a reload and announces each
  // new page on document$; without it, rendering once on DOMContentLoaded is enough.
  if (typeof document$ !== "undefined") {
    document$.subscribe(function () { renderAll(document); });
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { renderAll(document); });
  } else {
    renderAll(document);
  }
})();
