// Typesets every formula of a built site with KaTeX, raising on errors.
// Usage: node katex_formulas.js KATEX_MIN_JS SITE_DIR; prints JSON
// {formulas: N, errors: [...]}.
const fs = require("fs");
const path = require("path");
const katex = require(process.argv[2]);
const errors = [];
let formulas = 0;

function unescape(text) {
  return text
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&amp;/g, "&");
}

function check(file) {
  const html = fs.readFileSync(file, "utf8");
  const pattern = /<(span|div) class="arithmatex">([\s\S]*?)<\/\1>/g;
  let match;
  while ((match = pattern.exec(html))) {
    const display = match[1] === "div";
    const tex = unescape(match[2])
      .trim()
      .replace(display ? /^\\\[|\\\]$/g : /^\\\(|\\\)$/g, "");
    formulas += 1;
    try {
      katex.renderToString(tex, { displayMode: display, throwOnError: true });
    } catch (error) {
      errors.push(`${file}: ${tex}: ${error.message}`);
    }
  }
}

function walk(folder) {
  for (const name of fs.readdirSync(folder)) {
    const file = path.join(folder, name);
    if (fs.statSync(file).isDirectory()) walk(file);
    else if (file.endsWith(".html")) check(file);
  }
}

walk(process.argv[3]);
console.log(JSON.stringify({ formulas, errors }));
