"""Where anatomy.browser looks for a browser and its driver, and what the browser test does without them.

Fake programs (shell scripts in ``tmp_path`` that print a version) stand in for Chromium and chromedriver: no
browser starts. The module's fixed paths (macOS applications, Debian's /usr/bin) are pointed at ``tmp_path``, so
what is installed on this machine never answers for a fake.
"""

import sys

import pytest

from anatomy import browser

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the fake programs are shell scripts")


def fake(folder, name, prints="", code=0):
    """An executable ``folder/name`` that prints ``prints`` and exits with ``code``; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\necho '{prints}'\nexit {code}\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture(autouse=True)
def nothing_installed(monkeypatch, tmp_path):
    """No fixed path holds a program unless a test puts one there."""
    monkeypatch.setattr(browser, "BROWSERS_AT", (str(tmp_path / "apps" / "chromium"),))
    monkeypatch.setattr(browser, "DRIVERS_AT", (str(tmp_path / "apps" / "chromedriver"),))


def test_env_wins_over_path(tmp_path):
    chosen = fake(tmp_path / "mine", "my-chrome", "Chromium 156.0.1.2")
    driver = fake(tmp_path / "mine", "my-driver", "ChromeDriver 156.0.1.2 (abc)")
    fake(tmp_path / "bin", "chromium", "Chromium 157.0.1.2")
    fake(tmp_path / "bin", "chromedriver", "ChromeDriver 157.0.1.2 (abc)")
    found = browser.find_browser({"CHROME": chosen, "CHROMEDRIVER": driver, "PATH": str(tmp_path / "bin")})
    assert (found.chrome.path, found.driver.path) == (chosen, driver)
    assert (found.chrome.version, found.driver.major) == ("Chromium 156.0.1.2", 156)


def test_path_in_name_order(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    fake(first, "google-chrome", "Google Chrome 156.0.1.2")
    fake(second, "chromium-browser", "Chromium 156.0.1.2")
    driver = fake(second, "chromedriver", "ChromeDriver 156.0.1.2 (abc)")
    path = f"{first}:{second}"
    assert browser.find_browser({"PATH": path}).chrome.path == str(second / "chromium-browser")
    assert browser.find_browser({"PATH": path}).driver.path == driver
    (second / "chromium-browser").unlink()
    assert browser.find_browser({"PATH": path}).chrome.path == str(first / "google-chrome")


def test_fixed_paths_after_path(tmp_path):
    app = fake(tmp_path / "apps", "chromium", "Chromium 156.0.1.2")
    driver = fake(tmp_path / "apps", "chromedriver", "ChromeDriver 156.0.1.2 (abc)")
    assert browser.find_browser({"PATH": ""}) == browser.Browser(
        browser.Program(app, "Chromium 156.0.1.2"), browser.Program(driver, "ChromeDriver 156.0.1.2"))
    on_path = fake(tmp_path / "bin", "chromium", "Chromium 156.0.1.2")
    assert browser.find_browser({"PATH": str(tmp_path / "bin")}).chrome.path == on_path


def test_version_failing_is_not_found(tmp_path):
    bin_ = tmp_path / "bin"
    fake(bin_, "chromium", "Chromium 156.0.1.2", code=1)
    fake(bin_, "chromium-browser", "no version here")
    works = fake(bin_, "google-chrome", "Google Chrome 156.0.1.2")
    fake(bin_, "chromedriver", "ChromeDriver 156.0.1.2 (abc)")
    assert browser.find_browser({"PATH": str(bin_)}).chrome.path == works
    broken = str(bin_ / "chromium")
    with pytest.raises(browser.BrowserNotFound, match=f"CHROME={broken} \\(does not run `--version`\\)"):
        browser.find_browser({"PATH": str(bin_), "CHROME": broken})


def test_version_times_out(tmp_path):
    slow = tmp_path / "slow"
    slow.write_text("#!/bin/sh\nsleep 5\necho 'Chromium 156.0.1.2'\n")
    slow.chmod(0o755)
    assert browser.version(str(slow), timeout=0.5) is None
    assert browser.version(fake(tmp_path, "quick", "Chromium 156.0.1.2")).version == "Chromium 156.0.1.2"


def test_major_mismatch_is_one_line(tmp_path):
    bin_ = tmp_path / "bin"
    fake(bin_, "chromium", "Chromium 156.0.1.2")
    fake(bin_, "chromedriver", "ChromeDriver 155.0.9.9 (abc)")
    with pytest.raises(browser.BrowserNotFound) as mismatch:
        browser.find_browser({"PATH": str(bin_)})
    message = str(mismatch.value)
    assert "\n" not in message
    assert "Chromium 156.0.1.2" in message and "ChromeDriver 155.0.9.9" in message


def test_nothing_found_says_how_to_install():
    reason = browser.browser_or_reason({"PATH": ""})
    assert isinstance(reason, str) and "\n" not in reason
    assert reason.startswith("no Chrome or Chromium found") and "apt-get install chromium chromium-driver" in reason


@pytest.mark.parametrize("ci", [None, "", "false", "1"])
def test_no_browser_skips_outside_ci(ci):
    env = {"PATH": ""} if ci is None else {"PATH": "", "CI": ci}
    with pytest.raises(pytest.skip.Exception, match="no Chrome or Chromium found.*apt-get install"):
        browser.require(env, pytest.skip, pytest.fail)


@pytest.mark.parametrize("ci", ["true", "True"])
def test_no_browser_fails_on_ci(ci):
    with pytest.raises(pytest.fail.Exception, match="no Chrome or Chromium found.*apt-get install"):
        browser.require({"PATH": "", "CI": ci}, pytest.skip, pytest.fail)


@pytest.mark.parametrize("ci", [None, "true"])
def test_found_browser_neither_skips_nor_fails(tmp_path, ci):
    bin_ = tmp_path / "bin"
    chrome = fake(bin_, "chromium", "Chromium 156.0.1.2")
    fake(bin_, "chromedriver", "ChromeDriver 156.0.1.2 (abc)")
    env = {"PATH": str(bin_)} if ci is None else {"PATH": str(bin_), "CI": ci}
    assert browser.require(env, pytest.skip, pytest.fail).chrome.path == chrome


def test_main_prints_paths_or_reason(tmp_path, monkeypatch, capsys):
    bin_ = tmp_path / "bin"
    fake(bin_, "chromium", "Chromium 156.0.1.2")
    fake(bin_, "chromedriver", "ChromeDriver 156.0.1.2 (abc)")
    monkeypatch.delenv("CHROME", raising=False)
    monkeypatch.delenv("CHROMEDRIVER", raising=False)
    monkeypatch.setenv("PATH", str(bin_))
    assert browser.main() == 0
    assert f"browser: {bin_ / 'chromium'} (Chromium 156.0.1.2)" in capsys.readouterr().out
    monkeypatch.setenv("PATH", "")
    assert browser.main() == 1
    assert capsys.readouterr().err.startswith("no Chrome or Chromium found")
