"""Find a Chrome or Chromium and its chromedriver on this machine, for the browser test (standard library only).

Where it looks, in order, for the browser and for its driver:

1. the ``CHROME`` and ``CHROMEDRIVER`` environment variables (when set, only there: a choice that does not run
   is reported, never replaced by another browser);
2. ``PATH``: ``chromium``, ``chromium-browser``, ``google-chrome``; ``chromedriver``;
3. the usual macOS applications (Google Chrome, Chromium);
4. Debian's ``/usr/bin/chromium`` and ``/usr/bin/chromedriver``.

A program counts as found when ``--version`` runs within ``VERSION_TIMEOUT`` s and prints a version. The browser
and its driver must share the major version (chromedriver refuses any other browser)::

    python -m anatomy.browser     # prints the two paths and versions (exit 0), or why not (exit 1)

Without them the browser test is skipped with the reason (how to install one), except where ``CI=true``: there a
lost browser fails the run, since a skipped test would pass it (``require``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn

BROWSERS_ON_PATH = ("chromium", "chromium-browser", "google-chrome")
DRIVERS_ON_PATH = ("chromedriver",)
BROWSERS_AT = ("/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
               "/Applications/Chromium.app/Contents/MacOS/Chromium", "/usr/bin/chromium")
DRIVERS_AT = ("/usr/bin/chromedriver",)
VERSION_TIMEOUT = 20.0  # seconds for ``--version``: Debian's chromium is a shell script, and the machine may be busy
INSTALL = ("install one: Debian/Ubuntu `apt-get install chromium chromium-driver`; macOS `brew install --cask "
           "chromium` and `brew install chromedriver`; or set CHROME and CHROMEDRIVER to their paths")


class BrowserNotFound(RuntimeError):
    """No usable browser and driver pair; the message is one line that says what was looked for."""


@dataclass(frozen=True)
class Program:
    path: str
    version: str  # as it prints it: "Chromium 156.0.8078.114"

    @property
    def major(self) -> int:
        """``"Chromium 156.0.8078.114"`` -> 156."""
        return int(re.search(r"(\d+)\.\d+", self.version).group(1))

    def __str__(self) -> str:
        return f"{self.path} ({self.version})"


@dataclass(frozen=True)
class Browser:
    chrome: Program
    driver: Program


def version(path: str, timeout: float = VERSION_TIMEOUT) -> Program | None:
    """The program at ``path`` if ``path --version`` prints a version within ``timeout`` s, else None."""
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"^.*?\d+(\.\d+)+", done.stdout, re.MULTILINE)  # "Chromium 156.0.8078.114 built on ..."
    return Program(path, found.group(0).strip()) if done.returncode == 0 and found else None


def candidates(variable: str, on_path: tuple[str, ...], at: tuple[str, ...], env: Mapping[str, str]) -> list[str]:
    """Where to look, in order: ``env[variable]`` alone when set, else PATH's ``on_path``, then the paths ``at``."""
    if env.get(variable):
        return [env[variable]]
    found = [shutil.which(name, path=env.get("PATH", "")) for name in on_path]
    return list(dict.fromkeys([path for path in found if path] + [path for path in at if os.path.exists(path)]))


def first(what: str, variable: str, on_path: tuple[str, ...], at: tuple[str, ...], env: Mapping[str, str]) -> Program:
    """The first candidate that runs; else ``BrowserNotFound`` naming everything looked at."""
    for path in candidates(variable, on_path, at, env):
        if program := version(path):
            return program
    looked = (f"{variable}={env[variable]} (does not run `--version`)" if env.get(variable)
              else f"${variable}, {', '.join(on_path)} on PATH, {', '.join(at)}")
    raise BrowserNotFound(f"no {what} found; looked at {looked}; {INSTALL}")


def find_browser(env: Mapping[str, str] | None = None) -> Browser:
    """The browser and its driver (see the module docstring for where it looks); ``BrowserNotFound`` otherwise."""
    env = os.environ if env is None else env
    chrome = first("Chrome or Chromium", "CHROME", BROWSERS_ON_PATH, BROWSERS_AT, env)
    driver = first("chromedriver", "CHROMEDRIVER", DRIVERS_ON_PATH, DRIVERS_AT, env)
    if chrome.major != driver.major:
        raise BrowserNotFound(f"browser and driver differ in major version: {chrome} and {driver}; install the "
                              f"chromedriver of version {chrome.major}, or set CHROME and CHROMEDRIVER to a "
                              "matching pair")
    return Browser(chrome, driver)


def browser_or_reason(env: Mapping[str, str] | None = None) -> Browser | str:
    """The browser and its driver, or the one line that says why there are none and how to install them."""
    try:
        return find_browser(env)
    except BrowserNotFound as reason:
        return str(reason)


def require(env: Mapping[str, str], skip: Callable[[str], NoReturn], fail: Callable[[str], NoReturn]) -> Browser:
    """The browser and its driver; without them ``fail(reason)`` where ``env["CI"]`` is ``true``, else
    ``skip(reason)``. The test framework's own (``pytest.skip``, ``pytest.fail``): this module imports none."""
    found = browser_or_reason(env)
    if isinstance(found, str):
        (fail if env.get("CI", "").strip().lower() == "true" else skip)(found)
    return found


def main() -> int:
    found = browser_or_reason()
    if isinstance(found, str):
        print(found, file=sys.stderr)
        return 1
    print(f"browser: {found.chrome}\ndriver:  {found.driver}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
