"""The studio end to end in headless Chromium: upload, start a job, watch it finish, compare, chat.

Needs Debian's chromium + chromium-driver (`make browser` installs them) and
selenium; without them the test skips with the reason. Screenshots of each
page land in build/test-artifacts/studio/.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, free_port, strop_cmd, wait_for

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "build" / "test-artifacts" / "studio"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
         "--no-first-run", "--disable-component-update", "--disable-sync", "--window-size=1280,1000")


def _why_no_browser() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, pkg in ((CHROMIUM, "chromium"), (DRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} not found (Debian package {pkg}; `make browser` installs it)"
    return None


pytestmark = pytest.mark.skipif(_why_no_browser() is not None, reason=str(_why_no_browser()))


@pytest.fixture
def studio(tmp_path, tiny_model_dir):
    port = free_port()
    proc = subprocess.Popen(strop_cmd("studio", "--port", str(port), "--workdir", str(tmp_path / "wd"), "--concurrency", "2",
                                      "--model-root", str(tiny_model_dir.parent)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(60)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in FLAGS + (f"--user-data-dir={tmp_path / 'chromium-profile'}",):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def wait(driver, condition, timeout: float = 240.0, what: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.3).until(condition, message=what)


@pytest.mark.slow
def test_studio_upload_train_compare_chat(studio, browser, tiny_model_dir, tmp_path):
    import httpx
    from selenium.webdriver.common.by import By

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                                       {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]})
                              for i in range(12)) + "\n")
    # Data page: upload through the file input; the report and token preview follow.
    browser.get(f"{studio}/studio/data.html")
    browser.find_element(By.ID, "file").send_keys(str(data))
    browser.find_element(By.CSS_SELECTOR, "#upload button").click()
    wait(browser, lambda d: "every row is valid" in d.find_element(By.ID, "msg").text, 60, "upload")
    model = browser.find_element(By.ID, "model")
    model.clear()
    model.send_keys(str(tiny_model_dir))
    browser.find_element(By.CSS_SELECTOR, "#check-form button").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#preview mark"), 60, "trained-token preview")
    assert "12 of 12" in browser.find_element(By.ID, "report").text
    shot(browser, "data")

    # A second run, started through the API, so the comparison has two curves.
    file_id = httpx.get(f"{studio}/v1/files").json()["data"][0]["id"]
    other = httpx.post(f"{studio}/v1/fine_tuning/jobs", json={"model": str(tiny_model_dir), "training_file": file_id,
                       "suffix": "api", "hyperparameters": {"n_epochs": 1, "learning_rate_multiplier": 5}}).json()

    # New-job form: common options, then start; the browser follows to the run page.
    browser.get(f"{studio}/studio/new.html")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#training_file option[value^='file-']"), 30, "file list")
    for field, value in (("model", str(tiny_model_dir)), ("suffix", "web"), ("n_epochs", "1"), ("max_steps", "2")):
        el = browser.find_element(By.ID, field)
        el.clear()
        el.send_keys(value)
    browser.find_element(By.ID, "estimate").click()
    wait(browser, lambda d: "Estimating" not in d.find_element(By.ID, "plan").text, 60, "estimate")
    plan = browser.find_element(By.ID, "plan").text
    assert "peak memory estimate" in plan or "unavailable" in plan
    shot(browser, "new-job")
    browser.find_element(By.ID, "start").click()
    wait(browser, lambda d: "run.html" in d.current_url, 30, "run page")
    job_id = browser.current_url.split("id=")[1]
    wait(browser, lambda d: "succeeded" in d.find_element(By.ID, "state").text
         or "failed" in d.find_element(By.ID, "state").text, 240, "job end")
    assert "succeeded" in browser.find_element(By.ID, "state").text
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#chart polyline"), 10, "loss curve")
    assert "ft:" in browser.find_element(By.ID, "state").text
    shot(browser, "run")

    deadline = time.monotonic() + 240
    while httpx.get(f"{studio}/v1/fine_tuning/jobs/{other['id']}").json()["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    browser.get(f"{studio}/studio/")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr[data-status='succeeded']")) == 2, 30, "runs table")
    shot(browser, "runs")

    browser.get(f"{studio}/studio/compare.html?ids={job_id},{other['id']}")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chart polyline")) == 2, 30, "two curves")
    table = browser.find_element(By.ID, "table").text
    assert "web" in table and "api" in table and "final train loss" in table
    shot(browser, "compare")

    tuned = httpx.get(f"{studio}/v1/fine_tuning/jobs/{job_id}").json()["fine_tuned_model"]
    browser.get(f"{studio}/studio/playground.html?tuned={tuned}")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"#tuned option"), 30, "model list")
    browser.find_element(By.ID, "send").click()
    wait(browser, lambda d: d.find_element(By.ID, "base-out").get_attribute("data-done")
         and d.find_element(By.ID, "tuned-out").get_attribute("data-done"), 120, "both answers")
    assert browser.find_element(By.ID, "tuned-name").text == tuned
    assert browser.find_element(By.ID, "base-name").text == str(tiny_model_dir)
    shot(browser, "playground")
