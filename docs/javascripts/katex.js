// Typesets the equations (pymdownx.arithmatex, generic mode) with the
// KaTeX files shipped in assets/katex, on every page load, including
// Material's instant navigation.
function renderMath(body) {
  renderMathInElement(body, {
    delimiters: [
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    throwOnError: false,
  });
}

if (typeof document$ !== "undefined") {
  document$.subscribe(({ body }) => renderMath(body));
} else {
  document.addEventListener("DOMContentLoaded", () =>
    renderMath(document.body),
  );
}
