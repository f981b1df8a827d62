"""JupyterLab on a loopback port and a Chrome or Chromium driven by selenium; every stop verified.

The ``session`` fixture yields a ``Session`` (lab, driver, folders for screenshots and for a failure's evidence)
over a copy of the notebooks; ``open_notebook`` opens one in it: ``page = open_notebook("07_attention_maps.ipynb")``.
The browser is the one ``anatomy.browser`` finds, by its explicit paths (Selenium Manager never downloads one);
without one the tests are skipped with the reason, or fail where ``CI=true``.

Nothing passes by accident: a page script that throws, an image hash that is not a SHA-256 digest, a JupyterLab
command that fails, a missing element and a wait past its deadline each fail naming the notebook and what was
checked. Every wait polls its condition (``anatomy.processes.wait_for``) and fails at once, with the tail of the
lab's log, when JupyterLab exits or the notebook's kernel dies (any status but starting, idle and busy).

Every stop is verified (Linux's /proc): after each test no kernel of the lab is left; at the end JupyterLab's
process group, everything it started (its kernels run in sessions of their own), chromedriver's group and every
Chromium process of the profile are gone, or teardown fails naming what was left (and kills it).

On a failure the screenshot, the browser's console and the JupyterLab log are kept under pytest's temporary
directory; the report's "evidence" section names them and shows the log's tail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import (JavascriptException, NoSuchElementException, TimeoutException,
                                        WebDriverException)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from anatomy.browser import Browser, require
from anatomy.processes import PROC, Process, processes, stop_group, wait_for

REPO = Path(__file__).resolve().parents[2]
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000")
SETTINGS = {  # every cell in the DOM (no virtual scrolling), so each output can be checked where it is
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}
OWNER = "ANATOMY_BROWSER_TEST"  # in the environment of JupyterLab and of chromedriver: all they start inherits it
LAB_START = 120  # s for JupyterLab to answer
OPEN = 120  # s for a notebook to open with an idle kernel
SCRIPT = 60  # s for one page script or JupyterLab command (selenium's own HTTP calls give up at 120 s)
GONE = 20  # s for stopped processes to be gone
ALIVE = ("starting", "idle", "busy")  # a kernel status outside these, once it ran, is a kernel that died


class LabFailed(RuntimeError):
    """JupyterLab exited, never answered, or a kernel died; the message ends with the log's tail."""


def started_by(owner: str, profile: str | None = None) -> list[Process]:
    """Processes whose environment holds ``OWNER=owner``, or whose command line names ``profile`` (Chromium's
    renderers start with an empty environment, its crash handler without the profile). Linux; [] elsewhere."""
    needle, found = f"{OWNER}={owner}".encode(), []
    for process in processes():
        try:
            environ = (PROC / str(process.pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            environ = []  # ended while read, or not ours to read
        if needle in environ or (profile and f"--user-data-dir={profile}" in process.command):
            found.append(process)
    return found


def gone(what: str, left) -> None:
    """Wait up to ``GONE`` s until ``left()`` is empty; else kill what is left and fail naming it."""
    try:
        wait_for(lambda: not left(), GONE, f"{what} to end", poll=0.2)
    except TimeoutError:
        remaining = left()
        for process in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        raise RuntimeError(f"{what} left running: {', '.join(map(str, remaining))} (now killed)") from None


def said(failure: WebDriverException) -> str:
    """The first line of selenium's message (the rest names the browser's version)."""
    return (failure.msg or type(failure).__name__).splitlines()[0]


def every(*steps) -> None:
    """Run each step, also after one failed; then one error naming every failure."""
    failures = []
    for step in steps:
        try:
            step()
        except Exception as failure:
            failures.append(f"{type(failure).__name__}: {failure}")
    if failures:
        raise RuntimeError("teardown: " + "\n".join(failures))


@dataclass
class Lab:
    port: int
    token: str
    process: subprocess.Popen
    log: Path
    owner: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, method: str = "GET", timeout: float = 30):
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"JupyterLab log {self.log}, last {len(text)} lines:\n" + "\n".join(text)

    def check(self) -> None:
        """Fail, naming the port and the log, when JupyterLab has exited."""
        if self.process.poll() is None:
            return
        taken = ", the port already taken" if "already in use" in self.log.read_text(errors="replace") else ""
        raise LabFailed(f"JupyterLab on port {self.port} exited with {self.process.returncode}{taken}\n{self.tail()}")

    def kernels(self) -> list[Process]:
        """What JupyterLab started that runs outside its process group: its kernels and all they started."""
        return [p for p in started_by(self.owner) if p.group != self.process.pid]

    def shutdown_kernels(self) -> None:
        """Shut every session and kernel down through the lab's API, then verify no kernel process is left; once
        JupyterLab has exited, nothing (that failed the test; stopping it kills and names what it left)."""
        if self.process.poll() is not None:
            return
        for session in self.api("sessions"):
            self.api(f"sessions/{session['id']}", method="DELETE")
        for kernel in self.api("kernels"):
            self.api(f"kernels/{kernel['id']}", method="DELETE")
        gone(f"the kernels of JupyterLab on port {self.port}", self.kernels)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _lab_environment(home: Path, owner: str) -> dict:
    settings = home / "settings"
    for name, values in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    return {**os.environ, OWNER: owner, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
            "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
            "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "IPYTHONDIR": str(home / "ipython")}


@contextlib.contextmanager
def jupyter_lab(root: Path, home: Path, port: int | None = None):
    """JupyterLab serving ``root`` on 127.0.0.1 with a random token, logging to ``home/lab.log``; on exit its
    kernels are shut down, its process group stopped, and nothing it started is left."""
    port, token, owner = port or _free_port(), secrets.token_hex(16), f"lab-{secrets.token_hex(6)}"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True"]
    command += ["--allow-root"] if os.geteuid() == 0 else []
    with open(home / "lab.log", "wb") as log:
        process = subprocess.Popen(command, env=_lab_environment(home, owner), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    lab = Lab(port, token, process, home / "lab.log", owner)
    try:
        _wait_for_server(lab)
        try:
            yield lab
        finally:
            lab.shutdown_kernels()
    finally:
        every(lambda: stop_group(process, 15, GONE),
              lambda: gone(f"processes started by JupyterLab on port {port}", lambda: started_by(owner)))


def _wait_for_server(lab: Lab) -> None:
    def answers() -> bool:
        lab.check()  # exited: fail now, with the log
        try:
            lab.api("status", timeout=5)
        except OSError:
            return False
        return True

    try:
        wait_for(answers, LAB_START, f"JupyterLab to answer on port {lab.port}", poll=0.5)
    except TimeoutError as late:
        raise LabFailed(f"{late}\n{lab.tail()}") from None


@contextlib.contextmanager
def chromium(found: Browser, profile: Path, log: Path):
    """Headless ``found.chrome`` through ``found.driver`` (chromedriver in a process group of its own, logging to
    ``log``), with a fresh profile; on exit quit, and nothing of chromedriver or of the profile is left."""
    owner = f"browser-{secrets.token_hex(6)}"
    options = webdriver.ChromeOptions()
    options.binary_location = found.chrome.path
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for a failure's evidence
    service = Service(executable_path=found.driver.path, log_output=str(log), env={**os.environ, OWNER: owner},
                      popen_kw={"start_new_session": True})
    driver = None
    try:
        try:
            driver = webdriver.Chrome(options=options, service=service)
        except WebDriverException as failure:
            raise RuntimeError(f"{found.chrome} did not start through {found.driver}: {failure.msg}; "
                               f"chromedriver's log: {log}") from None
        driver.set_script_timeout(SCRIPT)
        driver.set_page_load_timeout(SCRIPT)
        yield driver
    finally:
        every(lambda: driver and driver.quit(),
              lambda: service.process and stop_group(service.process, 5, GONE),
              lambda: gone(f"Chromium of profile {profile}", lambda: started_by(owner, str(profile))))


@dataclass
class Session:
    lab: Lab
    driver: webdriver.Chrome
    shots: Path  # screenshots of each notebook, live and reopened
    evidence: Path  # what a failed test leaves: screenshot, console, where the lab's log is


def save_evidence(session: Session, folder: Path, tail: bool = True) -> str:
    """The page's screenshot and the browser's console into ``folder``; one line for each, then the lab log's
    tail (or only where it is, with ``tail=False``)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    try:
        session.driver.save_screenshot(str(folder / "screenshot.png"))
        lines.append(f"screenshot: {folder / 'screenshot.png'}")
    except Exception as failure:
        lines.append(f"screenshot: none ({type(failure).__name__}: {failure})")
    try:
        console = [f"{entry['level']} {entry['message']}" for entry in session.driver.get_log("browser")]
        (folder / "console.log").write_text("\n".join(console) + "\n")
        lines.append(f"browser console: {folder / 'console.log'} ({len(console)} entries)")
    except Exception as failure:
        lines.append(f"browser console: none ({type(failure).__name__}: {failure})")
    return "\n".join([*lines, session.lab.tail() if tail else f"JupyterLab log: {session.lab.log}"])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report gets an "evidence" section (``save_evidence``; a ``LabFailed`` has the log's tail)."""
    report = yield
    session = item.funcargs.get("session")
    if report.failed and isinstance(session, Session) and hasattr(report.longrepr, "addsection"):
        folder = session.evidence / (re.sub(r"[^\w.-]+", "-", item.name) + f"-{call.when}")
        tail = not (call.excinfo and call.excinfo.errisinstance(LabFailed))
        report.longrepr.addsection("evidence", save_evidence(session, folder, tail))
    return report


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A ``Session`` over a copy of the notebooks and the pictures they read: the repository's stay without outputs."""
    found = require(os.environ, pytest.skip, pytest.fail)
    root, home = tmp_path_factory.mktemp("notebooks"), tmp_path_factory.mktemp("lab")
    for notebook in (REPO / "notebooks").glob("*.ipynb"):
        shutil.copy(notebook, root / notebook.name)
    shutil.copytree(REPO / "notebooks" / "pictures", root / "pictures")
    shots = Path(os.environ.get("ANATOMY_SCREENSHOTS", home / "screenshots"))
    with jupyter_lab(root, home) as lab, chromium(found, home / "chromium", home / "chromedriver.log") as driver:
        yield Session(lab, driver, shots, tmp_path_factory.mktemp("evidence"))


@pytest.fixture
def open_notebook(session):
    """Open a notebook of the session's copy in JupyterLab (again, to reopen it). After the test, passed or
    failed, every kernel is shut down and verified gone; the next test opens its notebook in a page of its own."""
    yield lambda name: Notebook(session, name)
    session.lab.shutdown_kernels()


COMMAND = """
const [name, done] = arguments;
window.jupyterapp.commands.execute(name).then(
  () => done({}), failure => done({error: String(failure && failure.message || failure)}));
"""
READY = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
return !!(w && w.context && w.context.isReady && k && k.status === 'idle');
"""
WATCH_KERNEL = """
const context = window.jupyterapp.shell.currentWidget.sessionContext;
window.anatomyKernel = {id: context.session.kernel.id, statuses: []};
context.statusChanged.connect((_, status) => window.anatomyKernel.statuses.push(status));
"""
RUN_ALL = """
window.anatomyRun = {done: false};
window.jupyterapp.commands.execute('notebook:run-all-cells').then(
  ok => Object.assign(window.anatomyRun, {done: true, ok: ok === true}),
  failure => Object.assign(window.anatomyRun, {done: true, error: String(failure && failure.message || failure)}));
"""
RAN_ALL = """
const running = [...window.jupyterapp.shell.currentWidget.node.querySelectorAll('.jp-InputArea-prompt')]
  .some(prompt => prompt.innerText.includes('*'));
return window.anatomyRun.done && !running ? window.anatomyRun : null;
"""
IMAGE_HASH = """
const [image, done] = arguments;
const hash = source => fetch(source).then(r => r.arrayBuffer()).then(bytes => {
  const head = Array.from(new Uint8Array(bytes.slice(0, 8)));
  if (head.join() !== '137,80,78,71,13,10,26,10') throw new Error('not a PNG: ' + source.slice(0, 60));
  return crypto.subtle.digest('SHA-256', bytes);
}).then(d => Array.from(new Uint8Array(d), x => x.toString(16).padStart(2, '0')).join(''));
const attempt = tries => {  // a redraw replaces the image's blob URL and revokes the old one: hash the new one
  const source = image.src;
  hash(source).then(done, failure => image.src !== source && tries > 0 ? attempt(tries - 1)
                                                                         : done('error: ' + failure));
};
attempt(3);
"""
ERRORS = """
const notebook = window.jupyterapp.shell.currentWidget.content;
const found = [];
for (let i = 0; i < notebook.model.cells.length; i++) {
  const cell = notebook.model.cells.get(i);
  if (cell.type !== 'code') continue;
  for (let j = 0; j < cell.outputs.length; j++) {
    const output = cell.outputs.get(j).toJSON();
    if (output.output_type === 'error') found.push(`cell ${i}: ${output.ename}: ${output.evalue}`);
  }
}
for (const node of window.jupyterapp.shell.currentWidget.node.querySelectorAll('.jp-OutputArea-output')) {
  if (node.offsetParent !== null && /Error displaying widget|Loading widget/.test(node.innerText))
    found.push('shown: ' + node.innerText.slice(0, 80));
}
return found;
"""
FIGURES = """
const notebook = window.jupyterapp.shell.currentWidget.node;
return [...notebook.querySelectorAll('[class^="anatomy-style-"]')].map(span => {
  const style = span.closest('.jp-OutputArea-child');
  const panel = style.nextElementSibling, still = panel && panel.nextElementSibling;
  const image = still && still.querySelector('img');
  return {panel: !!panel && panel.offsetParent !== null && !!panel.querySelector('[class*="anatomy-live-"]'),
          png: !!image && image.offsetParent !== null && image.naturalWidth > 0};
});
"""


class Notebook:
    """One notebook open in JupyterLab, driven through the app's own commands (``window.jupyterapp``)."""

    def __init__(self, session: Session, name: str):
        self.driver, self.lab, self.name, self.watching = session.driver, session.lab, name, False
        # a workspace of its own: no tab of an earlier test is restored beside it (or instead of it)
        try:
            self.driver.get(f"{self.lab.url}/lab/workspaces/{secrets.token_hex(8)}/tree/{name}?token={self.lab.token}")
        except TimeoutException:
            raise TimeoutError(f"{name}: JupyterLab's page did not load in {SCRIPT} s") from None
        self.wait(OPEN, "the notebook and an idle kernel", lambda: self.js(READY, what="the notebook's kernel"))
        self.js(WATCH_KERNEL, what="the kernel's status")
        self.watching = True

    def js(self, script: str, *args, what: str):
        """Run ``script`` in the page; a script that throws fails, naming the notebook and ``what`` it checked."""
        try:
            return self.driver.execute_script(script, *args)
        except JavascriptException as failure:
            raise AssertionError(f"{self.name}: the page script for {what} threw: {said(failure)}") from None

    def alive(self) -> None:
        """Fail, with the lab's log, when JupyterLab exited or the kernel left starting, idle and busy."""
        self.lab.check()
        if self.watching:
            statuses = self.js("return window.anatomyKernel.statuses", what="the kernel's status")
            if died := [status for status in statuses if status not in ALIVE]:
                raise LabFailed(f"{self.name}: the kernel went {' then '.join(died)}\n{self.lab.tail()}")

    def wait(self, timeout: float, what, condition):
        """Poll ``condition()`` every 0.5 s until it is truthy, and return it; fail as soon as ``alive`` does, and
        after ``timeout`` s with a TimeoutError naming the notebook and ``what`` (a string, or a function
        that describes what is found at the deadline)."""
        def polled():
            self.alive()
            return condition()

        try:
            return wait_for(polled, timeout, what, poll=0.5)
        except TimeoutError as late:
            raise TimeoutError(f"{self.name}: {late}") from None

    def command(self, name: str) -> None:
        """Run a JupyterLab command and wait for its promise; one that fails or throws fails naming it."""
        try:
            outcome = self.driver.execute_async_script(COMMAND, name)
        except JavascriptException as failure:
            raise AssertionError(f"{self.name}: JupyterLab command {name} threw: {said(failure)}") from None
        except TimeoutException:
            raise TimeoutError(f"{self.name}: JupyterLab command {name} did not finish in {SCRIPT} s") from None
        if "error" in outcome:
            raise AssertionError(f"{self.name}: JupyterLab command {name} failed: {outcome['error']}")

    def run_all(self, timeout: float = 300) -> None:
        """Run every cell and wait until each has run and no prompt shows [*]: fail on a cell's error, on a
        kernel that dies, after ``timeout`` s."""
        self.js(RUN_ALL, what="starting notebook:run-all-cells")
        run = self.wait(timeout, "every cell to run (notebook:run-all-cells)",
                        lambda: self.js(RAN_ALL, what="run-all's progress"))
        if "error" in run:
            raise AssertionError(f"{self.name}: JupyterLab command notebook:run-all-cells failed: {run['error']}")
        if not run["ok"]:
            raise AssertionError(f"{self.name}: run-all stopped; errors shown: {self.errors()}")

    def errors(self) -> list[str]:
        """Error outputs of any cell, and widget errors shown."""
        return self.js(ERRORS, what="error outputs")

    def node(self):
        """The current notebook's DOM node: other open notebooks stay out of every check."""
        return self.js("return window.jupyterapp.shell.currentWidget.node", what="the notebook's page")

    def find(self, parent, css: str, what: str):
        """The element ``css`` in ``parent``; missing, a failure naming the notebook and ``what``."""
        try:
            return parent.find_element(By.CSS_SELECTOR, css)
        except NoSuchElementException:
            raise AssertionError(f"{self.name}: no {what} ({css!r})") from None

    def panels(self, expected: int, timeout: float = 60) -> list:
        """The live figures' panels, once ``expected`` of them are drawn (a widget view renders asynchronously,
        after its output arrived); at the deadline, a failure that quotes each figure's panel output, hidden
        or not ("Error displaying widget: model not found" is hidden by the figure's CSS)."""
        def drawn():
            return self.node().find_elements(By.CSS_SELECTOR, "[class*='anatomy-live-']")

        said = "return [...arguments[0].querySelectorAll('[class^=\"anatomy-style-\"]')].map(span => " \
               "(span.closest('.jp-OutputArea-child').nextElementSibling || {textContent: '(none)'}).textContent)"
        self.wait(timeout, lambda: f"{expected} live figure panel(s); found {len(drawn())}, the panel outputs say "
                                   f"{self.js(said, self.node(), what='the panel outputs')}",
                  lambda: len(drawn()) >= expected)
        return drawn()

    def controls(self, panel, figure: int) -> dict:
        """The controls of one live panel by their labels: ``{"patch row": <slider>, ...}``."""
        found = {}
        for box in panel.find_elements(By.CSS_SELECTOR, ".widget-dropdown, .widget-slider"):
            label = self.find(box, ".widget-label", f"label of a control of figure {figure}").text
            found[label] = self.find(box, "select, .noUi-target", f"control {label!r} of figure {figure}")
        return found

    def image_hash(self, panel, where: str) -> str:
        """The SHA-256 of the panel's PNG; anything else fails naming the notebook and ``where``."""
        image = self.find(panel, "img", f"image of {where}")
        try:
            digest = self.driver.execute_async_script(IMAGE_HASH, image)
        except JavascriptException as failure:
            raise AssertionError(f"{self.name}, {where}: the image hash script threw: {said(failure)}") from None
        if not re.fullmatch(r"[0-9a-f]{64}", str(digest)):
            raise AssertionError(f"{self.name}, {where}: the figure's image has no hash: {digest}")
        return digest

    def move(self, control, where: str) -> str:
        """Move one control one step (a dropdown to its next option, a slider one step right); its new label."""
        self.js("arguments[0].scrollIntoView({block: 'center'})", control, what=f"scrolling to {where}")
        if control.tag_name == "select":
            menu = Select(control)
            if not menu.all_selected_options:
                raise AssertionError(f"{self.name}, {where}: the dropdown shows no option chosen")
            menu.select_by_index((menu.options.index(menu.first_selected_option) + 1) % len(menu.options))
            return menu.first_selected_option.text
        handle = self.find(control, ".noUi-handle", f"handle of {where}")
        at_end = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
        handle.click()
        handle.send_keys(Keys.ARROW_LEFT if at_end else Keys.ARROW_RIGHT)
        return handle.get_attribute("aria-valuetext") or handle.get_attribute("aria-valuenow")

    def save(self) -> None:
        self.command("docmanager:save")
        self.wait(SCRIPT, "the save", lambda: self.js(
            "return !window.jupyterapp.shell.currentWidget.context.model.dirty", what="the save"))

    def live_figures(self) -> list[dict]:
        """For each live figure's outputs (style, panel, static PNG): which of panel and PNG are shown."""
        return self.js(FIGURES, what="which of each live figure's panel and PNG show")

    def show_figure(self, index: int) -> None:
        """Scroll the cell of live figure ``index`` into view."""
        self.js("window.jupyterapp.shell.currentWidget.node.querySelectorAll('[class^=\"anatomy-style-\"]')"
                "[arguments[0]].closest('.jp-Cell').scrollIntoView({block: 'start'})", index,
                what=f"scrolling to live figure {index}")

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
