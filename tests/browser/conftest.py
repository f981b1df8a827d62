"""JupyterLab on a loopback port and Debian's Chromium driven by selenium, both stopped on every exit.

The ``session`` fixture yields (lab, browser, screenshot folder) over a copy of the notebooks; ``open_notebook``
opens one in it: ``page = open_notebook("07_attention_maps.ipynb")``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import JavascriptException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000")
REPO = Path(__file__).resolve().parents[2]
SETTINGS = {  # every cell in the DOM (no virtual scrolling), so each output can be checked where it is
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


@dataclass
class Lab:
    url: str
    token: str

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        for session in self.api("sessions"):
            self.api(f"sessions/{session['id']}", method="DELETE")
        for kernel in self.api("kernels"):
            self.api(f"kernels/{kernel['id']}", method="DELETE")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _lab_environment(home: Path) -> dict:
    settings = home / "settings"
    for name, values in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "IPYTHONDIR": str(home / "ipython")}


@contextlib.contextmanager
def jupyter_lab(root: Path, home: Path, timeout: float = 120):
    """JupyterLab serving ``root`` on 127.0.0.1 with a random token; its kernels and process group end on exit."""
    port, token = _free_port(), secrets.token_hex(16)
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True"]
    command += ["--allow-root"] if os.geteuid() == 0 else []
    log = open(home / "lab.log", "wb")
    process = subprocess.Popen(command, env=_lab_environment(home), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    lab = Lab(f"http://127.0.0.1:{port}", token)
    try:
        _wait_for_server(lab, process, timeout, home / "lab.log")
        yield lab
    finally:
        with contextlib.suppress(Exception):
            lab.shutdown_kernels()  # kernels run in their own sessions: the server's group does not hold them
        _stop(process)
        log.close()


def _wait_for_server(lab: Lab, process, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            lab.api("status")
            return
        time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(process) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)
            return


@contextlib.contextmanager
def chromium(profile: Path):
    """Headless Debian Chromium through the system chromedriver, with a fresh profile; quit on exit."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        raise RuntimeError(f"{missing} not installed; run `make browser` (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_script_timeout(300)  # a JupyterLab command that never resolves fails
        yield driver
    finally:
        driver.quit()


IMAGE_HASH = """
const [img, done] = arguments;
fetch(img.src).then(r => r.arrayBuffer()).then(b => crypto.subtle.digest('SHA-256', b))
  .then(d => done(Array.from(new Uint8Array(d)).map(x => x.toString(16).padStart(2, '0')).join('')))
  .catch(e => done('error: ' + e));
"""
ERRORS = """
const notebook = window.jupyterapp.shell.currentWidget.content;
const found = [];
for (let i = 0; i < notebook.model.cells.length; i++) {
  const cell = notebook.model.cells.get(i);
  if (cell.type !== 'code') continue;
  for (let j = 0; j < cell.outputs.length; j++) {
    const output = cell.outputs.get(j);
    if (output.type === 'error') found.push(`cell ${i}: ${output.toJSON().ename}: ${output.toJSON().evalue}`);
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

    def __init__(self, driver, lab: Lab, name: str, timeout: float = 180):
        self.driver, self.lab, self.name = driver, lab, name
        # a workspace of its own: no tab of an earlier test is restored beside it (or instead of it)
        driver.get(f"{lab.url}/lab/workspaces/{secrets.token_hex(8)}/tree/{name}?token={lab.token}")
        self.wait(timeout, "the notebook and an idle kernel", lambda: self.js(
            "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
            "const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
            "return !!(w && w.context.isReady && k && k.status === 'idle');"))

    def js(self, script: str, *args):
        with contextlib.suppress(JavascriptException):
            return self.driver.execute_script(script, *args)
        return None

    def wait(self, timeout: float, what: str, condition) -> None:
        try:
            WebDriverWait(self.driver, timeout, poll_frequency=0.5).until(lambda _: condition())
        except TimeoutException:
            raise TimeoutError(f"{self.name}: waited {timeout} s for {what}") from None

    def command(self, name: str):
        """Run a JupyterLab command and wait for its promise (``notebook:run-all-cells`` resolves when done)."""
        return self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            f"window.jupyterapp.commands.execute({name!r}).then(r => done(r === undefined ? null : r),"
            " e => done('error: ' + e));")

    def run_all(self) -> None:
        self.command("notebook:run-all-cells")  # resolves once every cell has run (or one failed)
        self.wait(60, "every prompt to lose its [*]", lambda: self.js(
            "return ![...window.jupyterapp.shell.currentWidget.node.querySelectorAll('.jp-InputArea-prompt')]"
            ".some(p => p.innerText.includes('*'));"))

    def errors(self) -> list[str]:
        return self.js(ERRORS) or []

    def node(self):
        """The current notebook's DOM node: other open notebooks stay out of every check."""
        return self.js("return window.jupyterapp.shell.currentWidget.node")

    def panels(self, expected: int, timeout: float = 60) -> list:
        """The live figures' panels, after waiting up to ``timeout`` s for ``expected`` of them: widget views
        render after run-all resolves, so an immediate count can miss them."""
        def drawn():
            return self.node().find_elements(By.CSS_SELECTOR, "[class*='anatomy-live-']")
        with contextlib.suppress(TimeoutError):
            self.wait(timeout, f"{expected} live figure(s)", lambda: len(drawn()) >= expected)
        return drawn()

    def image_hash(self, panel) -> str:
        image = panel.find_element(By.CSS_SELECTOR, "img")
        return self.driver.execute_async_script(IMAGE_HASH, image)

    def move(self, control) -> str:
        """Move one control one step (a dropdown to its next option, a slider one step right); its new label."""
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", control)
        if control.tag_name == "select":
            menu = Select(control)
            index = (len(menu.options) and (menu.options.index(menu.first_selected_option) + 1)) % len(menu.options)
            menu.select_by_index(index)
            return menu.first_selected_option.text
        handle = control.find_element(By.CSS_SELECTOR, ".noUi-handle")
        at_end = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
        handle.click()
        handle.send_keys(Keys.ARROW_LEFT if at_end else Keys.ARROW_RIGHT)
        return handle.get_attribute("aria-valuetext") or handle.get_attribute("aria-valuenow")

    def save(self) -> None:
        self.command("docmanager:save")
        self.wait(60, "the save", lambda: self.js("return !window.jupyterapp.shell.currentWidget.context.model.dirty"))

    def live_figures(self) -> list[dict]:
        """For each live figure's outputs (style, panel, static PNG): which of panel and PNG are shown."""
        return self.js(FIGURES) or []

    def show_figure(self, index: int) -> None:
        """Scroll the cell of live figure ``index`` into view."""
        self.js("window.jupyterapp.shell.currentWidget.node"
                ".querySelectorAll('[class^=\"anatomy-style-\"]')[arguments[0]]"
                ".closest('.jp-Cell').scrollIntoView({block: 'start'})", index)

    def close(self) -> None:
        """Close every tab (the notebook was saved; nothing is asked)."""
        self.command("application:close-all")

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """(lab, browser, screenshot folder) over a copy of the notebooks: the repository's stay without outputs."""
    root, home = tmp_path_factory.mktemp("notebooks"), tmp_path_factory.mktemp("lab")
    for notebook in (REPO / "notebooks").glob("*.ipynb"):
        shutil.copy(notebook, root / notebook.name)
    shots = Path(os.environ.get("ANATOMY_SCREENSHOTS", home / "screenshots"))
    with jupyter_lab(root, home) as lab, chromium(home / "chromium") as browser:
        yield lab, browser, shots


@pytest.fixture
def open_notebook(session):
    """Open a notebook of the session's copy in JupyterLab (again, to reopen it). After the test, passed or
    failed, every tab is closed and every kernel shut down, so no test starts beside another's leftovers."""
    lab, browser, _ = session
    opened = []

    def open_(name: str) -> Notebook:
        opened.append(Notebook(browser, lab, name))
        return opened[-1]

    yield open_
    if opened:
        with contextlib.suppress(Exception):
            opened[-1].close()
    lab.shutdown_kernels()
