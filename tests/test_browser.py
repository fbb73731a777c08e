"""JupyterLab in headless Chromium: Run All Cells in every notebook, offline, and check what a learner sees.

A JupyterLab server is started on 127.0.0.1 (random free port, random token) over a temporary
copy of ``notebooks/`` (JupyterLab autosaves, and the repository's notebooks must stay without
outputs). Debian's Chromium, driven by selenium through ``/usr/bin/chromedriver``, opens each
notebook found by ``notebooks/*.ipynb`` and ``notebooks/solutions/*.ipynb`` (in that order: later
chapters reuse models earlier ones cache), clicks Run > Run All Cells in the ``ci`` profile, waits
for the last cell, and fails on:

* a cell that did not run (Run All stops at an error; JupyterLab ignores ``skip-execution`` tags);
* any error output or traceback, any "Javascript Error" rendered in an output;
* any stderr line not on the reviewed allow-list :data:`STDERR_ALLOWED`;
* a kernel still busy after the last cell;
* a bertviz view (``div.cu-bertviz``) or a course view (``div.cu-attn-view``) without its drawn SVG.

Chapter 3 must show its bertviz head and model views and the offline views; in chapter 8 a
message typed into the chat box and sent with Enter must get an answer. Outbound network is
blocked three ways: the pytest process by the conftest guard, the server and its kernels by
``tests/netguard`` on ``PYTHONPATH``, and Chromium by ``--host-resolver-rules``.

``COURSE_BROWSER_NOTEBOOKS`` (a glob relative to ``notebooks/``, e.g. ``03_*.ipynb``) limits the
run; ``COURSE_BROWSER_TIMEOUT`` (seconds per notebook, default 420) suits a slow machine;
``COURSE_SCREENSHOT_DIR`` keeps screenshots of failures and of the checked views.
Without Chromium or its driver the test is skipped with the command that installs them, except
when ``CI=true``, where that is a failure.
"""
from __future__ import annotations

import fnmatch
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
CHROMIUM = Path(os.environ.get("COURSE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("COURSE_CHROMEDRIVER", "/usr/bin/chromedriver"))
INSTALL_HINT = "apt-get install chromium chromium-driver"
# Run All of one notebook in the ci profile, generous for a loaded 2-core machine
NOTEBOOK_TIMEOUT_S = float(os.environ.get("COURSE_BROWSER_TIMEOUT", "420"))


def _notebooks() -> list[str]:
    """Every notebook of the course, relative to notebooks/, chapters first, then solutions."""
    found = [p.relative_to(REPO / "notebooks").as_posix()
             for pattern in ("*.ipynb", "solutions/*.ipynb") for p in sorted((REPO / "notebooks").glob(pattern))]
    only = os.environ.get("COURSE_BROWSER_NOTEBOOKS")
    return [n for n in found if fnmatch.fnmatch(n, only)] if only else found


# stderr a learner may see without anything being wrong; each entry says why. Everything else
# written to stderr (warnings, tracebacks, library noise) fails the test.
STDERR_ALLOWED: tuple[tuple[str, str], ...] = (
    (r"^\s*$", "blank lines"),
    # tqdm's text bar (where its widget cannot be used, e.g. inside a library's own bar): "desc: 40%|####  | 2/5 [..]"
    (r"^[^|\n]*\d+%\|.*\|\s*\d+(\.\d+)?[kMG]?/\d+(\.\d+)?[kMG]?\s*\[.*\]\s*$", "a tqdm progress bar"),
)
_ALLOWED = [re.compile(p) for p, _ in STDERR_ALLOWED]


def _not_allowed(text: str) -> list[str]:
    """The lines of a stderr output that no allow-list entry covers."""
    lines = re.split(r"[\r\n]+", text)
    return [line for line in lines if not any(p.match(line) for p in _ALLOWED)]


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


def _snapshot(driver, name: str, tmp: Path) -> None:
    path = tmp / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
    driver.save_screenshot(str(path))
    keep = os.environ.get("COURSE_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)


def _api(lab: dict, path: str, method: str = "GET") -> object:
    req = urllib.request.Request(f"{lab['url']}{path}", method=method,
                                 headers={"Authorization": f"token {lab['token']}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


def _shut_down_kernels(lab: dict) -> None:
    """Free the CPU and memory of the previous notebook's kernel."""
    for session in _api(lab, "/api/sessions"):
        _api(lab, f"/api/sessions/{session['id']}", method="DELETE")


# What the page shows, read in one script call: prompts of the code cells, stderr/error outputs,
# rendered "Javascript Error"s and the views with their SVG.
_PAGE_STATE_JS = r"""
const cells = Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell'));
const prompt = c => { const p = c.querySelector('.jp-InputPrompt'); return p ? p.textContent.trim() : ''; };
const out = sel => Array.from(document.querySelectorAll(sel));
return {
  prompts: cells.map(prompt),
  stderr: cells.flatMap((c, i) => Array.from(c.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
      .map(e => ({cell: i, prompt: prompt(c), text: e.textContent}))),
  jsErrors: out('.jp-OutputArea-output').map(e => e.textContent).filter(t => t.includes('Javascript Error')),
  views: out('.cu-bertviz, .cu-attn-view').map(e => ({
      kind: e.classList.contains('cu-bertviz') ? 'bertviz-' + e.dataset.view : 'course',
      svgs: e.querySelectorAll('svg').length,
      drawn: Array.from(e.querySelectorAll('svg')).filter(s => s.querySelectorAll('line, path, rect, text').length > 0).length,
      inExplorer: !!e.closest('.cu-attn-explorer')})),
};
"""


def _kernel_busy(lab: dict) -> bool:
    return any(k.get("execution_state") != "idle" for k in _api(lab, "/api/kernels"))


def _run_all(driver, lab: dict, notebook: str) -> dict:
    """Open ``notebook``, Run All Cells, wait for the last cell; return the page state."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    _shut_down_kernels(lab)
    driver.get(f"{lab['url']}/lab/tree/{notebook}?reset&token={lab['token']}")
    WebDriverWait(driver, 90).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")))

    def kernel_idle(d) -> bool:
        bar = d.find_elements(By.ID, "jp-main-statusbar")
        return bool(bar) and "Idle" in bar[0].text

    try:
        WebDriverWait(driver, 120).until(kernel_idle)
    except TimeoutException:
        _snapshot(driver, f"{notebook}-no-kernel", lab["tmp"])
        pytest.fail(f"{notebook}: the kernel did not become idle within 120 s", pytrace=False)
    _click_menu(driver, "Run", "Run All Cells")
    start = time.monotonic()
    stable_since = None
    while True:   # done: no cell queued or running, and the kernel idle, for 3 s in a row
        state = driver.execute_script(_PAGE_STATE_JS)
        running = any("*" in p for p in state["prompts"])
        if not running and not _kernel_busy(lab):
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since > 3:
                break
        else:
            stable_since = None
        if time.monotonic() - start > NOTEBOOK_TIMEOUT_S:
            _snapshot(driver, f"{notebook}-timeout", lab["tmp"])
            ran = sum(bool(re.fullmatch(r"\[\d+\]:", p)) for p in state["prompts"])
            pytest.fail(f"{notebook}: Run All not finished after {NOTEBOOK_TIMEOUT_S:.0f} s ({ran} of "
                        f"{len(state['prompts'])} cells ran); a slow machine can raise COURSE_BROWSER_TIMEOUT",
                        pytrace=False)
        time.sleep(1)
    state["seconds"] = time.monotonic() - start
    return state


def _problems(notebook: str, state: dict) -> list[str]:
    problems = []
    not_run = [i for i, p in enumerate(state["prompts"]) if not re.fullmatch(r"\[\d+\]:", p)]
    if not_run:
        problems.append(f"{len(not_run)} code cells did not run (first: code cell {not_run[0]})")
    for out in state["stderr"]:
        bad = _not_allowed(out["text"])
        if bad:
            kind = "a traceback" if "Traceback" in out["text"] or re.search(r"\w+(Error|Exception)\b", bad[0]) else "stderr"
            lines = [line.strip() for line in bad if line.strip()]
            if kind == "a traceback":   # the exception's own line is the last one: keep it
                lines = lines[:2] + ["..."] + lines[-2:] if len(lines) > 4 else lines
            shown = " | ".join(lines)[:900]
            problems.append(f"code cell {out['cell']} {out['prompt']} wrote {kind}: {shown}")
    problems += [f"Javascript Error: {t[:300]}" for t in state["jsErrors"]]
    problems += [f"a {v['kind']} view without its drawing ({v['svgs']} svg, {v['drawn']} drawn)"
                 for v in state["views"] if v["drawn"] == 0]
    return problems


def _chapter3_views(state: dict) -> list[str]:
    kinds = [v["kind"] for v in state["views"] if v["drawn"]]
    problems = []
    for kind, least in (("bertviz-head", 3), ("bertviz-model", 3), ("course", 4)):
        if kinds.count(kind) < least:
            problems.append(f"chapter 3 should draw at least {least} {kind} views (MiniLM, SmolLM2, the course GPT), "
                            f"drew {kinds.count(kind)}")
    if not any(v["inExplorer"] and v["drawn"] for v in state["views"]):
        problems.append("the attention explorer (ipywidgets) did not draw its view")
    return problems


def _chat_box_answers(driver, lab: dict) -> list[str]:
    """Type a message into chapter 8's chat box, press Enter, wait for the streamed answer."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    boxes = driver.find_elements(By.CSS_SELECTOR, ".cu-chat")
    if not boxes:
        return ["chapter 8 shows no chat box (.cu-chat)"]
    box = boxes[-1]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    count = lambda who: len(box.find_elements(By.CSS_SELECTOR, f".cu-chat-{who}"))  # noqa: E731
    users, assistants = count("user"), count("assistant")
    field = box.find_element(By.CSS_SELECTOR, "input[type='text']")
    field.click()
    field.send_keys("Name a colour.", Keys.ENTER)
    seen_user_early = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            transcript = box.find_element(By.CSS_SELECTOR, ".cu-chat-transcript").text
            seen_user_early |= "Name a colour." in transcript
            send = box.find_element(By.XPATH, ".//button[normalize-space()='Send']")
            if count("assistant") > assistants and send.is_enabled() and "▌" not in transcript \
                    and "thinking" not in transcript and not _kernel_busy(lab):
                break
        except StaleElementReferenceException:  # the widget redrew while we read it (seen in CI): read again
            box = (driver.find_elements(By.CSS_SELECTOR, ".cu-chat") or [box])[-1]
        time.sleep(0.3)
    else:
        _snapshot(driver, "chat-box-no-answer", lab["tmp"])
        return ["the chat box gave no complete answer within 120 s of a message sent with Enter"]
    problems = []
    if count("user") != users + 1:
        problems.append("the message sent with Enter is not in the transcript")
    reply = box.find_elements(By.CSS_SELECTOR, ".cu-chat-assistant")[-1].text
    if not re.sub(r"^assistant:\s*", "", reply).strip():
        problems.append("the chat box's answer is empty")
    if not seen_user_early:
        problems.append("the user's message never showed in the transcript")
    return problems


@pytest.mark.parametrize("notebook", _notebooks())
def test_run_all_cells_in_jupyterlab(lab: dict, browser, notebook: str) -> None:
    driver = browser
    state = _run_all(driver, lab, notebook)
    _mark(f"{notebook}: Run All finished in {state['seconds']:.0f} s")
    problems = _problems(notebook, state)
    if notebook.startswith("03_"):
        problems += _chapter3_views(state)
    if notebook.startswith("08_"):
        problems += _chat_box_answers(driver, lab)
    if problems:
        _snapshot(driver, f"{notebook}-failed", lab["tmp"])
    assert not problems, f"{notebook} in JupyterLab (Run All Cells, ci profile):\n- " + "\n- ".join(problems)
