"""The course site as a reader sees it: built by Sphinx, then opened page by page in Chromium.

The build is the README's command (``sphinx-build -W -b html docs ...``: warnings are errors,
every tutorial executed), made once per session into a temporary folder. Then every page is
opened in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by
Selenium), and a page fails if it has a JavaScript error, an image that does not load, an
equation that MathJax did not typeset (or raw TeX left in its text), a link to a file or
anchor that is not in the site, or if it asks the network for anything.

Outside CI, the browser tests skip when Chromium is missing (``apt-get install chromium
chromium-driver``); under ``CI=true`` they fail instead: CI installs it (``.ci/run``).
``MINICOAT_SITE=docs/_build/html`` checks an existing build instead of making one.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1280,900")
TUTORIALS = sorted(p for p in (ROOT / "notebooks").glob("*.py") if not p.name.startswith("_"))


def unavailable(reason):
    """Skip, except in CI, where a test that cannot run is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: tests do not skip in CI)")
    pytest.skip(reason)


# -- the build ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """The built site's HTML folder: the README's build command, run once per session."""
    if os.environ.get("MINICOAT_SITE"):
        return Path(os.environ["MINICOAT_SITE"]).resolve()
    try:
        import myst_nb  # noqa: F401
        import sphinx  # noqa: F401
    except ImportError as err:
        unavailable(f"the docs tooling is not installed ({err}): pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    offline = without_network()
    start = time.perf_counter()
    run = subprocess.run(
        [*offline, sys.executable, "-m", "sphinx", "-W", "-b", "html", "-d",
         str(out / "doctrees"), "docs", str(out / "html")], cwd=ROOT, capture_output=True,
        text=True)
    seconds = time.perf_counter() - start
    assert run.returncode == 0, (
        f"sphinx-build failed ({run.returncode}) after {seconds:.0f} s:\n"
        + run.stdout[-3000:] + run.stderr[-6000:])
    print(f"\nsite built in {seconds:.0f} s{' with no network' if offline else ''}: "
          f"{len(pages_of(out / 'html'))} pages")
    return out / "html"


def without_network():
    """A command prefix that runs the build in a network namespace of its own, with only a
    loopback (the notebooks' kernels talk to the build over it): proof that nothing is
    fetched. ``[]`` where this machine does not allow it (it needs root, as CI has)."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if not unshare or not ip:
        return []
    if subprocess.run([unshare, "-n", ip, "link", "set", "lo", "up"],
                      capture_output=True).returncode:
        return []
    return [unshare, "-n", "sh", "-c", f'"{ip}" link set lo up && exec "$@"', "sh"]


def pages_of(site):
    return sorted(p for p in site.rglob("*.html") if "_static" not in p.parts)


def test_site_has_every_page(site):
    """Every page of docs/, every tutorial, every assignment and a page per public module."""
    from minicoat.assignments.build import default_sources

    pages = {p.relative_to(site).as_posix() for p in pages_of(site)}
    expected = {f"{p.stem}.html" for p in (ROOT / "docs").glob("*.md")}
    expected |= {f"tutorials/{p.stem}.html" for p in TUTORIALS}
    expected |= {f"assignments/{Path(name).stem}.html" for name, _ in default_sources()}
    expected |= {"reference/index.html", "reference/minicoat.ops.conv.html", "genindex.html"}
    assert not expected - pages, f"pages missing from the site: {sorted(expected - pages)}"


def test_committed_notebooks_are_stripped_and_paired():
    """Outputs live on the site: each notebooks/*.ipynb has none, and has its .py's cells."""
    import jupytext
    import nbformat

    for source in TUTORIALS:
        paired = source.with_suffix(".ipynb")
        assert paired.exists(), f"{source.name} has no paired .ipynb: jupytext --sync {source}"
        notebook = nbformat.read(paired, as_version=4)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert not any(c.outputs or c.execution_count for c in code), (
            f"{paired.name} has outputs: jupyter nbconvert --clear-output --inplace {paired}")
        cells = [(c.cell_type, c.source) for c in jupytext.read(source).cells]
        assert cells == [(c.cell_type, c.source) for c in notebook.cells], (
            f"{paired.name} differs from {source.name}: jupytext --sync {source}")


def test_tutorials_are_executed_with_their_outputs_and_downloadable(site):
    for source in TUTORIALS:
        page = (site / "tutorials" / f"{source.stem}.html").read_text()
        outputs = page.count('class="cell_output')
        assert outputs > 0, f"{source.name}: the page shows no cell output (not executed?)"
        text = source.read_text()
        if "plt." in text or "display(Image" in text:
            assert re.search(r'class="cell_output.*?<img', page, re.S), (
                f"{source.name} draws figures but its page shows none")
        link = f"../_sources/tutorials/{source.stem}.ipynb"
        assert f'href="{link}"' in page, f"{source.name}: no download of the notebook"
        notebook = json.loads((site / "tutorials" / link).read_text())
        code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
        assert code and all(not c["outputs"] for c in code), "downloads are clean notebooks"
        assert "".join(code[0]["source"]).strip() in text, "the download is this tutorial"


def test_assignments_are_shown_as_handed_out(site):
    """Stubs instead of solutions, no hidden tests, in the pages and in what they offer.

    (The tutorials show some of the same code on purpose: they are not searched.)
    """
    from minicoat.assignments.build import default_sources, render

    secret = set()
    for name, text in default_sources():
        student = render(text, name, student=True)  # hints may quote a line: not secret
        page = (site / "assignments" / f"{Path(name).stem}.html").read_text()
        assert "NotImplementedError" in page and "BEGIN SOLUTION" not in page
        secret |= {line.strip() for line in render(text, name, student=False).splitlines()
                   if len(line.strip()) > 25 and line.strip() not in student}
    assert len(secret) > 20, "the sources have solution regions"
    offered = [p for p in site.rglob("*") if p.is_file() and (
        "assignments" in p.relative_to(site).parts or "_downloads" in p.parts)]
    assert len(offered) >= 2 * len(default_sources()), "pages and downloadable notebooks"
    leaks = {}
    for path in offered:
        found = [line for line in secret if line in path.read_text(errors="replace")]
        if found:
            leaks[path.relative_to(site).as_posix()] = found[:3]
    assert not leaks, f"solution code on the site: {leaks}"


def test_api_reference_documents_all_of_minicoat_all(site):
    import minicoat

    documented = {}
    for page in (site / "reference").glob("*.html"):
        for anchor in re.findall(r'<dt class="sig sig-object py" id="([^"]+)"', page.read_text()):
            documented[anchor] = page.name
    missing = []
    for name in minicoat.__all__:
        obj = getattr(minicoat, name)
        if not any(anchor.rsplit(".", 1)[-1] == name and _resolves_to(anchor, obj)
                   for anchor in documented):
            missing.append(name)
    assert not missing, f"minicoat.__all__ names without an API entry: {missing}"


def _resolves_to(dotted, obj):
    import importlib

    module, _, name = dotted.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False
    return found is obj or getattr(found, "fun", None) is getattr(obj, "fun", obj)


# -- the browser ----------------------------------------------------------------------------

# Installed before any script of a page runs: uncaught errors, rejected promises and resources
# that fail to load (error events do not bubble, so they are caught on the way down).
ERROR_HOOK = """
window.__siteErrors = [];
window.addEventListener("error", (e) => {
  const t = e.target;
  window.__siteErrors.push(t && t !== window && (t.src || t.href)
    ? `failed to load <${t.tagName.toLowerCase()}> ${t.src || t.href}`
    : `${e.message} at ${e.filename}:${e.lineno}`);
}, true);
window.addEventListener("unhandledrejection",
  (e) => window.__siteErrors.push(`unhandled promise rejection: ${e.reason}`));
"""

# Run in the page once it has loaded: waits for MathJax and for every image, then reports.
INSPECT = r"""
const done = arguments[arguments.length - 1];
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const images = [...document.images];
  images.forEach((img) => { img.loading = "eager"; });
  await Promise.all(images.map((img) => img.complete ? null : new Promise((ok) => {
    img.addEventListener("load", ok); img.addEventListener("error", ok);
    setTimeout(ok, 10000);
  })));
  const math = [...document.querySelectorAll(".math")];
  const skip = "pre, code, script, style, textarea, mjx-container, .highlight";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const rawTex = [];
  const tex = new RegExp([String.raw`\\\(|\\\[|\$\$|\\begin\{`,  // TeX delimiters
    String.raw`(^|[^\\\w$])\$([^\s$][^$\n]*?[^\s\\$]|\w)\$(?!\w)`].join("|"));  // $x$
  for (let node; (node = walker.nextNode());) {
    if (node.parentElement.closest(skip)) continue;
    const m = node.textContent.match(tex);
    if (m) rawTex.push(node.textContent.slice(Math.max(0, m.index - 30), m.index + 50));
  }
  return {
    errors: window.__siteErrors,
    brokenImages: images.filter((img) => !(img.complete && img.naturalWidth > 0))
                        .map((img) => img.getAttribute("src")),
    images: images.length,
    math: math.length,
    untypeset: math.filter((m) => !m.querySelector("mjx-container"))
                   .map((m) => m.textContent.trim().slice(0, 80)),
    texErrors: [...document.querySelectorAll("mjx-merror")]
                   .map((e) => e.getAttribute("data-mjx-error") || e.textContent),
    rawTex: rawTex,
    codeBlocks: document.querySelectorAll("div.highlight pre").length,
    copyButtons: document.querySelectorAll("div.highlight button.copybtn").length,
    links: [...document.querySelectorAll("a[href]")].map((a) => a.href),
    ids: [...document.querySelectorAll("[id], a[name]")].map((e) => e.id || e.name),
  };
})().then(done, (err) => done({fatal: String(err)}));
"""


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium through Selenium, with this machine's closed network in mind."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        unavailable("Chromium is not installed: apt-get install chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed: pip install -e '.[docs]'")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="minicoat-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # an explicit driver: Selenium Manager would otherwise try to download one
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": ERROR_HOOK})
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def inspect(driver, url):
    """Open ``url`` and report what a reader would run into (see ``INSPECT``)."""
    driver.get_log("browser"), driver.get_log("performance")  # drop the previous page's
    driver.execute_script("try { localStorage.clear(); sessionStorage.clear(); } catch (e) {}")
    driver.get(url)  # every page as a first visit: nothing remembered from the one before
    report = driver.execute_async_script(INSPECT)
    report["console"] = [entry["message"] for entry in driver.get_log("browser")
                         if entry["level"] == "SEVERE"]
    report["requests"] = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            request_url = message["params"]["request"]["url"]
            if not request_url.startswith(("file:", "data:", "blob:", "about:")):
                report["requests"].append(request_url)
    return report


def broken_links(reports, site_root):
    """``{page: [links]}``: links to files or anchors that the site does not have."""
    ids = {page: set(report["ids"]) for page, report in reports.items()}
    broken = {}
    for page, report in reports.items():
        for link in report["links"]:
            parts = urlsplit(link)
            if parts.scheme in ("http", "https", "mailto") or link.startswith("javascript:"):
                continue
            path = Path(unquote(parts.path))
            problem = None
            if parts.scheme != "file":
                problem = "not a file of the site"
            elif site_root not in path.parents and path != site_root:
                problem = "outside the site"
            elif not path.exists():
                problem = "no such file"
            elif parts.fragment and path.suffix == ".html":
                target = path.relative_to(site_root).as_posix()
                if target in ids and unquote(parts.fragment) not in ids[target]:
                    problem = "no such anchor"
            if problem:
                broken.setdefault(page, []).append(f"{link} ({problem})")
    return broken


@pytest.fixture(scope="session")
def reports(site, browser):
    """``{page: report}`` for every page of the site, each opened once."""
    start = time.perf_counter()
    found = {p.relative_to(site).as_posix(): inspect(browser, p.as_uri()) for p in pages_of(site)}
    print(f"\n{len(found)} pages opened in Chromium in {time.perf_counter() - start:.0f} s")
    return found


def problems(reports, *keys):
    return {page: {k: r[k] for k in keys if r.get(k)} for page, r in reports.items()
            if any(r.get(k) for k in keys) or r.get("fatal")}


def test_no_page_has_javascript_errors(reports):
    assert not problems(reports, "errors", "console", "fatal")


def test_every_image_loads(reports):
    assert not problems(reports, "brokenImages")
    assert sum(r["images"] for r in reports.values()) > len(TUTORIALS), "figures are shown"


def test_every_equation_is_typeset(reports):
    assert not problems(reports, "untypeset", "texErrors", "rawTex")
    for page in ("math.html", f"tutorials/{TUTORIALS[0].stem}.html"):
        assert reports[page]["math"] > 5, f"{page} shows its equations"


def test_every_code_block_has_a_copy_button(reports):
    missing = {page: f"{r['copyButtons']} buttons for {r['codeBlocks']} code blocks"
               for page, r in reports.items() if r["copyButtons"] != r["codeBlocks"]}
    assert not missing
    assert reports[f"tutorials/{TUTORIALS[0].stem}.html"]["copyButtons"] > 10


def test_every_internal_link_resolves(reports, site):
    assert not broken_links(reports, site)
    assert sum(len(r["links"]) for r in reports.values()) > 1000


def test_nothing_is_fetched_from_the_network(reports):
    assert not problems(reports, "requests")


def test_screenshot_of_a_tutorial(site, browser):
    """A picture of a rendered tutorial page with a figure, saved into the build output."""
    tutorial = TUTORIALS[0].stem
    browser.get((site / "tutorials" / f"{tutorial}.html").as_uri())
    browser.execute_async_script(INSPECT)
    shots = site / "_screenshots"
    shots.mkdir(exist_ok=True)
    top = shots / f"{tutorial}.png"
    browser.save_screenshot(str(top))
    browser.execute_script(
        "document.querySelector('.cell_output img').scrollIntoView({block: 'center'})")
    figure = shots / f"{tutorial}-figure.png"
    browser.save_screenshot(str(figure))
    for shot in (top, figure):
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"\nscreenshots: {top}, {figure}")


def test_the_checks_catch_a_broken_page(site, browser, tmp_path):
    """A page with each fault these tests look for, next to a copy of the site's assets."""
    shutil.copytree(site / "_static" / "mathjax", tmp_path / "_static" / "mathjax")
    mathjax = '<script defer src="_static/mathjax/tex-chtml.js"></script>'
    (tmp_path / "ok.html").write_text("<html><body><p id='here'>fine</p></body></html>")
    (tmp_path / "bad.html").write_text(f"""<html><head>{mathjax}</head><body>
        <img src="missing.png">
        <script>undefinedFunction();</script>
        <span class="math">\\(\\frac{{1}}\\)</span>
        <a href="ok.html#there">dead anchor</a> <a href="nowhere.html">dead page</a>
        <a href="ok.html#here">fine</a> <img src="http://127.0.0.1:9/pixel.png">
        </body></html>""")
    (tmp_path / "nomath.html").write_text("""<html><body>
        <p>raw $x^2$ and \\(y\\), never typeset</p><span class="math">\\(z\\)</span>
        </body></html>""")
    bad = inspect(browser, (tmp_path / "bad.html").as_uri())
    ok = inspect(browser, (tmp_path / "ok.html").as_uri())
    nomath = inspect(browser, (tmp_path / "nomath.html").as_uri())
    assert any("$x^2$" in raw for raw in nomath["rawTex"]), nomath
    assert any("\\(y" in raw for raw in nomath["rawTex"]) and nomath["untypeset"] == ["\\(z\\)"]
    assert any("undefinedFunction" in e for e in bad["errors"])
    assert any("missing.png" in src for src in bad["brokenImages"])
    assert bad["texErrors"], "a TeX error is reported"
    assert any("127.0.0.1" in url for url in bad["requests"])
    links = broken_links({"bad.html": bad, "ok.html": ok}, tmp_path)
    assert [link.rsplit(" ", 1)[-1] for link in links["bad.html"]] == [
        "anchor)", "file)"], links
    assert not any(problems({"ok.html": ok}, "errors", "brokenImages", "rawTex").values())
