"""The documentation runs: every Python block, the site build, the links.

Every ```python block of README.md and of docs/**/*.md is executed. The
blocks of one page run in order in one namespace, in a fresh working
directory, with a fresh Keras state (cleared session, float32 policy,
seeded). Pages run together in one subprocess (TensorFlow is imported
once); a page holding the marker `<!-- docs-test: own-process -->` runs in
a process of its own (for code that must run before TensorFlow starts,
such as `split_cpu`). Shell commands belong in ```bash blocks, which are
not run.

Run as a script, this file is the runner:
`python tests/test_docs.py OUTPUT.json PAGE [PAGE ...]`.
"""

import ast
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parent.parent
OWN_PROCESS = "<!-- docs-test: own-process -->"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
README_MAX_LINES = 220
TEST_COMMAND = (
    'pip install ".[test]" && python -m pytest -q -n auto --dist loadfile tests'
)
EXAMPLE_COMMAND = 'pip install ".[examples]" && python examples/distill.py'


def python_blocks(text):
    """The ```python blocks of a Markdown text, as `(line, code)` pairs.

    `line` is the 1-based line of the block's first code line. Blocks
    indented inside list items are dedented by their fence's indent.
    """
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        language = match["info"].strip().split(" ")[0].lower()
        start = i + 1
        i += 1
        while i < len(lines):
            closing = lines[i].strip()
            if closing.startswith(fence) and not closing.strip(fence[0]):
                break
            i += 1
        if language in ("python", "py"):
            body = [
                line[len(indent) :] if line.startswith(indent) else line
                for line in lines[start:i]
            ]
            blocks.append((start + 1, "\n".join(body) + "\n"))
        i += 1
    return blocks


def doc_pages():
    pages = [ROOT / "README.md"]
    pages += sorted((ROOT / "docs").rglob("*.md"))
    return [p for p in pages if p.exists()]


def pages_with_code():
    return [p for p in doc_pages() if python_blocks(p.read_text())]


def _relative(page):
    return str(pathlib.Path(page).resolve().relative_to(ROOT))


# The runner (executed in a subprocess).


def _fresh_keras_state():
    import keras

    keras.backend.clear_session()
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)


def run_page(page):
    """Runs every Python block of `page` in one namespace; returns a dict."""
    page = pathlib.Path(page)
    blocks = python_blocks(page.read_text())
    namespace = {"__name__": "__main__"}
    start = time.perf_counter()
    cpu_start = time.process_time()
    timings = []
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="docs_test_") as workdir:
        os.chdir(workdir)
        try:
            _fresh_keras_state()
            for line, code in blocks:
                where = f"{_relative(page)}:{line}"
                block_start = time.perf_counter()
                try:
                    exec(compile(code, where, "exec"), namespace)
                except BaseException:
                    return {
                        "ok": False,
                        "block": where,
                        "error": traceback.format_exc(),
                        "seconds": time.perf_counter() - start,
                    }
                timings.append((line, time.perf_counter() - block_start))
        finally:
            os.chdir(cwd)
    return {
        "ok": True,
        "blocks": len(blocks),
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
        "block_seconds": [[line, round(t, 2)] for line, t in timings],
    }


def _run_pages(output, pages):
    results = {}
    for page in [pathlib.Path(p).resolve() for p in pages]:
        results[_relative(page)] = run_page(page)
        print(f"{_relative(page)}: {results[_relative(page)]}", flush=True)
    pathlib.Path(output).write_text(json.dumps(results, indent=1))


# The tests (pytest).


def _subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("KERAS_BACKEND", "tensorflow")
    env.pop("TF_CONFIG", None)
    env["MPLBACKEND"] = "Agg"
    return env


def _run_in_subprocess(pages, tmp_dir):
    output = pathlib.Path(tmp_dir) / "results.json"
    command = [sys.executable, __file__, str(output)] + [str(p) for p in pages]
    proc = subprocess.run(
        command,
        cwd=ROOT,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if not output.exists():
        raise AssertionError(
            f"The documentation runner failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return json.loads(output.read_text())


def _own_process(page):
    return OWN_PROCESS in page.read_text()


if __name__ != "__main__":
    import pytest

    _PAGES = pages_with_code()

    @pytest.fixture(scope="module")
    def shared_results(tmp_path_factory):
        pages = [p for p in _PAGES if not _own_process(p)]
        return _run_in_subprocess(pages, tmp_path_factory.mktemp("docs"))

    @pytest.mark.parametrize("page", _PAGES, ids=[_relative(p) for p in _PAGES])
    def test_python_blocks_run(page, shared_results, tmp_path):
        if _own_process(page):
            result = _run_in_subprocess([page], tmp_path)[_relative(page)]
        else:
            result = shared_results[_relative(page)]
        assert result["ok"], (
            f"A Python block of {_relative(page)} fails, at "
            f"{result['block']}:\n{result['error']}"
        )

    @pytest.mark.parametrize("page", doc_pages(), ids=_relative)
    def test_python_blocks_parse(page):
        for line, code in python_blocks(page.read_text()):
            try:
                ast.parse(code)
            except SyntaxError as error:
                raise AssertionError(
                    f"{_relative(page)}:{line}: the Python block does not "
                    f"parse: {error}. Use ```bash for shell commands and "
                    "```text for output."
                ) from error

    def test_block_extraction():
        text = (
            "intro\n```python\nx = 1\n```\n"
            "```bash\nls\n```\n"
            "- item\n\n    ```python\n    y = x + 1\n    ```\n"
            "````markdown\n```python\nnot = code\n```\n````\n"
        )
        assert python_blocks(text) == [(3, "x = 1\n"), (11, "y = x + 1\n")]

    def test_readme_is_short_and_keeps_the_two_commands():
        text = (ROOT / "README.md").read_text()
        lines = text.count("\n")
        assert lines <= README_MAX_LINES, (
            f"README.md has {lines} lines; keep it under "
            f"{README_MAX_LINES} and move details to docs/."
        )
        assert TEST_COMMAND in text, f"README.md lacks `{TEST_COMMAND}`"
        assert EXAMPLE_COMMAND in text, f"README.md lacks `{EXAMPLE_COMMAND}`"

    def test_links_to_docs_pages_exist():
        """Relative links in README.md and `docs/*.md` names in the code."""
        missing = []
        readme = (ROOT / "README.md").read_text()
        for target in re.findall(r"\]\(([^)#\s]+)", readme):
            if "://" not in target and not (ROOT / target).exists():
                missing.append(f"README.md -> {target}")
        for folder in ("keras_jacobian", "examples", "benchmarks", "tests"):
            for path in sorted((ROOT / folder).rglob("*.py")):
                for name in re.findall(r"docs/[\w./-]+\.md", path.read_text()):
                    if not (ROOT / name).exists():
                        missing.append(f"{_relative(path)} -> {name}")
        assert not missing, f"Links to missing files: {missing}"

    # Pages whose numbers are those of the example scripts' default runs.
    NUMBER_PAGES = ("docs/index.md", "docs/examples.md")

    def _cells(line):
        return tuple(
            cell.strip().replace("**", "")
            for cell in line.strip().strip("|").split("|")
        )

    def _records():
        """What the scripts and benchmarks record of their runs."""
        texts = [p.read_text() for p in sorted(ROOT.glob("examples/*.py"))]
        texts += [
            p.read_text()
            for p in sorted(ROOT.glob("benchmarks/results/**/*.md"))
        ]
        return "\n".join(texts)

    def test_doc_numbers_are_the_recorded_ones():
        """Tables, percentages and durations of the pages are on record.

        Each table row with a number must be a row of a table in an example
        script's docstring (or a benchmark result), cell for cell; every
        decimal number and every "N min M s" of the prose must appear
        there too. A page whose numbers have no record must point to the
        page that has them instead.
        """
        records = _records()
        rows = {
            _cells(line)
            for line in records.splitlines()
            if line.strip().startswith("|")
        }
        record_numbers = set(re.findall(r"[+-]?\d+\.\d+", records))
        record_times = set(re.findall(r"\d+ min \d+ s", records))
        stale = []
        for name in NUMBER_PAGES:
            text = (ROOT / name).read_text()
            prose = []
            for line in text.splitlines():
                if line.strip().startswith("|"):
                    cells = _cells(line)
                    has_number = any(re.search(r"\d\.\d", c) for c in cells)
                    if has_number and cells not in rows:
                        stale.append(f"{name}: table row {line.strip()}")
                else:
                    prose.append(line)
            prose = "\n".join(prose)
            for number in re.findall(r"\d+\.\d+(?=%| points)", prose):
                if number not in record_numbers and (
                    "+" + number not in record_numbers
                ):
                    stale.append(f"{name}: {number}")
            for time_text in re.findall(r"\d+ min \d+ s", prose):
                if time_text not in record_times:
                    stale.append(f"{name}: {time_text}")
        assert not stale, (
            "Numbers of the docs that no example script or benchmark result "
            "records (copy them from the script's docstring, or remove "
            f"them): {stale}"
        )

    def test_mkdocs_build_strict(tmp_path):
        if importlib.util.find_spec("mkdocs") is None:
            pytest.skip(
                "mkdocs is not installed; install the docs extra "
                "(mkdocs, mkdocs-material, mkdocstrings[python]) to build "
                "the site"
            )
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mkdocs",
                "build",
                "--strict",
                "--site-dir",
                str(tmp_path / "site"),
            ],
            cwd=ROOT,
            env=_subprocess_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, (
            f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
        )
        site = tmp_path / "site"
        assert (site / "api" / "distiller" / "index.html").exists()
        _check_site_is_offline_with_math(site)

    def _check_site_is_offline_with_math(site):
        """KaTeX is in the site; no page loads anything from the network."""
        katex = site / "assets" / "katex"
        for name in ("katex.min.js", "katex.min.css", "LICENSE"):
            assert (katex / name).is_file(), name
        css = (katex / "katex.min.css").read_text()
        for font in re.findall(r"url\((fonts/[^)]+\.woff2)\)", css):
            assert (katex / font).is_file(), font
        remote = re.compile(
            r"<(?:script|img|iframe)\b[^>]*\bsrc=[\"']?(?:https?:)?//"
            r"|<link\b[^>]*\bhref=[\"']?(?:https?:)?//[^>]*>",
            re.IGNORECASE,
        )
        pages_with_math = 0
        for page in sorted(site.rglob("*.html")):
            html = page.read_text()
            loads = [
                m
                for m in remote.findall(html)
                if "stylesheet" in m or "preconnect" in m or "<link" not in m
            ]
            assert not loads, f"{page} loads from the network: {loads}"
            if 'class="arithmatex"' in html:
                pages_with_math += 1
                assert "assets/katex/katex.min.js" in html, page
                assert "assets/katex/contrib/auto-render.min.js" in html, page
        assert pages_with_math >= 5, pages_with_math
        node = shutil.which("node")
        if node is None:
            return  # The static checks above still ran.
        proc = subprocess.run(
            [
                node,
                str(ROOT / "tests" / "katex_formulas.js"),
                str(katex / "katex.min.js"),
                str(site),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["formulas"] >= 20, result
        assert not result["errors"], result["errors"]


if __name__ == "__main__":
    _run_pages(sys.argv[1], sys.argv[2:])
