"""JupyterLab in headless Chromium: run chapter 3 and see the offline attention view drawn.

A JupyterLab server is started on 127.0.0.1 (random free port, random token) over a temporary
copy of ``notebooks/`` (JupyterLab autosaves, and the repository's notebooks must stay without
outputs). Debian's Chromium, driven by selenium through ``/usr/bin/chromedriver``, opens
``03_attention_math.ipynb``, runs all cells (Run > Run All Cells) in the ``ci`` profile and
checks that the offline view (``course_utils.viz.attention_view``) drew its heads, that the
ipywidgets explorer rendered, and that no cell raised. Outbound network is blocked three ways:
the pytest process by the conftest guard, the server and its kernels by ``tests/netguard`` on
``PYTHONPATH``, and Chromium by ``--host-resolver-rules``.

Without Chromium or its driver the test is skipped with the command that installs them, except
when ``CI=true``, where that is a failure.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
NETGUARD = REPO / "tests" / "netguard"
NOTEBOOK = "03_attention_math.ipynb"
CHROMIUM = Path(os.environ.get("COURSE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("COURSE_CHROMEDRIVER", "/usr/bin/chromedriver"))
INSTALL_HINT = "apt-get install chromium chromium-driver"
# from Run All to the offline view (MiniLM loaded and drawn), ci profile; generous for a loaded 2-core machine
RUN_ALL_TIMEOUT_S = float(os.environ.get("COURSE_BROWSER_TIMEOUT", "180"))


_T0 = time.monotonic()


def _mark(what: str) -> None:
    """Progress with elapsed time (shown with ``pytest -s``), to see where a slow run spends it."""
    print(f"[browser test {time.monotonic() - _T0:6.1f} s] {what}", flush=True)


def _missing(reason: str) -> None:
    msg = f"{reason}; install them with `{INSTALL_HINT}` (Debian/Ubuntu, as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the browser test cannot run: {msg}", pytrace=False)
    pytest.skip(msg)


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        _missing(f"Chromium / chromedriver not found: {', '.join(missing)}")
    try:
        import selenium  # noqa: F401
    except ImportError:
        _missing("the Python package selenium is not installed (it is in the dev extra)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab() -> Iterator[dict]:
    """A JupyterLab server over a temporary copy of notebooks/; yields url, token and folders."""
    _require_browser()
    tmp = Path(tempfile.mkdtemp(prefix="course-browser-"))
    root = tmp / "notebooks"
    shutil.copytree(REPO / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    settings = tmp / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Render every cell (no virtual scrolling) so that the test can find outputs off screen.
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    apputils = tmp / "lab-settings" / "@jupyterlab" / "apputils-extension"
    apputils.mkdir(parents=True)   # no "get notified about Jupyter news?" toast (it would fetch news)
    (apputils / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env.update({
        "COURSE_PROFILE": "ci",
        "PYTHONPATH": os.pathsep.join(p for p in (str(NETGUARD), env.get("PYTHONPATH", "")) if p),
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "JUPYTERLAB_SETTINGS_DIR": str(tmp / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "lab-workspaces"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
    })
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:   # CI containers run as root
        cmd.append("--allow-root")
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited ({proc.returncode}):\n{(tmp / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("jupyter lab did not answer within 90 s")
            time.sleep(0.5)
        _mark(f"JupyterLab up on {url}")
        yield {"url": url, "token": token, "tmp": tmp, "proc": proc}
    finally:
        _mark("stopping JupyterLab")
        proc.terminate()   # the server shuts its kernels down on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)   # our own process group (start_new_session): server and kernels
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(lab: dict) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--disable-sync", "--disable-extensions", "--window-size=1500,1100",
                f"--user-data-dir={lab['tmp'] / 'chromium-profile'}",
                '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'):
        opts.add_argument(arg)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(lab["tmp"] / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    _mark("Chromium up")
    try:
        yield driver
    finally:
        driver.quit()


def _click_menu(driver, menu: str, item: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f"//li[contains(@class,'lm-MenuBar-item')][.//div[text()='{menu}']]").click()
    driver.find_element(By.XPATH, f"//li[contains(@class,'lm-Menu-item')][.//div[text()='{item}']]").click()


def _snapshot(driver, path: Path, keep: str | None) -> None:
    driver.save_screenshot(str(path))
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)


def _pixels_nontrivial(png: Path) -> tuple[int, float]:
    """(number of distinct colours, fraction of non-white pixels) of a screenshot."""
    from PIL import Image

    img = Image.open(png).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20) or []
    total = img.width * img.height
    white = sum(n for n, c in colours if min(c) > 245)
    return len(colours), 1 - white / total


def test_chapter3_offline_attention_view_renders(lab: dict, browser) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(f"{lab['url']}/lab/tree/{NOTEBOOK}?token={lab['token']}")
    WebDriverWait(driver, 90).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")))
    keep = os.environ.get("COURSE_SCREENSHOT_DIR")   # keep the screenshots there (to look at them)

    def kernel_idle(d) -> bool:
        bar = d.find_elements(By.ID, "jp-main-statusbar")
        return bool(bar) and "Idle" in bar[0].text

    try:
        WebDriverWait(driver, 120).until(kernel_idle)
    except TimeoutException:
        _snapshot(driver, lab["tmp"] / "no_kernel.png", keep)
        pytest.fail("the notebook's kernel did not become idle within 120 s", pytrace=False)
    _mark("kernel idle")
    _click_menu(driver, "Run", "Run All Cells")
    _mark("notebook open, Run All Cells clicked")

    def errors() -> list[str]:   # JupyterLab renders a cell's exception as an stderr output
        found = driver.execute_script(
            "return Array.from(document.querySelectorAll("
            "'.jp-OutputArea-output[data-mime-type=\"application/vnd.jupyter.stderr\"]'))"
            ".map(e => e.textContent).filter(t => /Traceback|^\\W*\\w+(Error|Exception)\\b/.test(t))"
            ".map(t => t.slice(0, 400));")
        return [t for t in found if "KeyboardInterrupt" not in t]   # our own interrupt below

    # 1. the offline view draws one svg.cu-attn-head per head (MiniLM layer 3: 12 heads)
    try:
        WebDriverWait(driver, RUN_ALL_TIMEOUT_S).until(lambda d: errors() or len(d.find_elements(
            By.CSS_SELECTOR, ".jp-OutputArea .cu-attn-view[data-heads='12'] svg.cu-attn-head")) >= 12)
    except TimeoutException:
        ran = sum(bool(re.fullmatch(r"\[\d+\]:", p.text.strip()))
                  for p in driver.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputPrompt"))
        _snapshot(driver, lab["tmp"] / "timeout.png", keep)
        pytest.fail(f"no offline attention view after {RUN_ALL_TIMEOUT_S:.0f} s ({ran} cells ran); "
                    "a slow machine can raise COURSE_BROWSER_TIMEOUT")
    assert not errors(), f"cells raised in JupyterLab: {errors()}"
    _mark("offline view drawn")
    if os.environ.get("COURSE_BROWSER_FULL_RUN") != "1":
        _click_menu(driver, "Kernel", "Interrupt Kernel")   # the rest is nbmake's job; free the CPU
    view = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea .cu-attn-view[data-heads='12']")[0]
    heads = view.find_elements(By.CSS_SELECTOR, "svg.cu-attn-head")
    assert sorted(int(h.get_attribute("data-head")) for h in heads) == list(range(12))
    assert all(h.size["width"] > 20 and h.size["height"] > 20 for h in heads), "heads drawn with no size"
    lines = view.find_elements(By.CSS_SELECTOR, "svg.cu-attn-lines line.cu-attn-line")
    assert len(lines) > 16, "the line diagram drew no lines"
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", view)
    ActionChains(driver).move_to_element(driver.find_element(By.ID, "jp-top-panel")).perform()  # no hover
    time.sleep(0.5)
    shot = lab["tmp"] / "offline_view.png"
    assert view.screenshot(str(shot)), "could not take a screenshot of the view"
    n_colours, ink = _pixels_nontrivial(shot)
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
    assert n_colours > 20 and ink > 0.03, f"screenshot looks empty: {n_colours} colours, {ink:.1%} ink"

    # 2. the ipywidgets explorer rendered (widget manager alive: sliders and the HTML view)
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".cu-attn-explorer .widget-slider"))
    assert driver.find_elements(By.CSS_SELECTOR, ".cu-attn-explorer .cu-attn-view svg.cu-attn-head")

    # 3. no cell so far raised; COURSE_BROWSER_FULL_RUN=1 also waits for the last cell (nbmake
    #    already runs the whole notebook; here the point is the browser, and time is short)
    if os.environ.get("COURSE_BROWSER_FULL_RUN") == "1":
        def finished(d) -> bool:
            prompts = [p.text for p in d.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputPrompt")]
            return bool(prompts) and all(p.strip() and "*" not in p for p in prompts)

        WebDriverWait(driver, 2 * RUN_ALL_TIMEOUT_S).until(finished)
        _mark("all cells finished")
        prompts = [p.text.strip() for p in driver.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputPrompt")]
        assert all(re.fullmatch(r"\[\d+\]:", p) for p in prompts), f"some cells did not run: {prompts}"
    assert not errors(), f"cells raised in JupyterLab: {errors()}"
    full = lab["tmp"] / "notebook.png"
    driver.save_screenshot(str(full))
    if keep:
        shutil.copy(full, Path(keep) / full.name)
