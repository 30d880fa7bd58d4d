"""The gateway's web page in a real browser: Debian's Chromium, headless, driven by chromedriver (selenium), its
microphone a fake device playing a committed sample. The page's final transcript equals what `mtasr-client` gets
for the same audio: for the microphone, the PCM16 the page actually sent (Chromium resamples the fake device's
audio, so the samples are the page's, read back from it); for the file picker, the file itself. A screenshot of the
page is kept in artifacts/gateway/."""

from __future__ import annotations

import base64
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_seglst
from gateway_client import DATA, as_float, pcm16, served_stack

from client.stream import stream_audio
from mtasr.audio import read_audio

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = ROOT / "artifacts" / "gateway"
SAMPLE = "two_speakers_overlap"

pytestmark = [pytest.mark.server,  # a tritonserver, the gateway and a browser: tests/conftest.py's tiers
              pytest.mark.skipif((CHROMIUM is None or CHROMEDRIVER is None) and not os.environ.get("CI"),
                                 reason="no chromium/chromedriver: run `make chromium`")]


@pytest.fixture(scope="module")
def browser_stack(tiny_parity, tmp_path_factory):
    work = tmp_path_factory.mktemp("gateway_browser")
    with served_stack(tiny_parity["work"] / "graphs", work) as (triton, gw):
        yield {"triton": triton, "gw": gw, "work": work}


@pytest.fixture(scope="module")
def wav(browser_stack) -> Path:
    """The committed sample as the 16 kHz PCM16 WAV Chromium's fake capture device wants."""
    import soundfile as sf

    path = browser_stack["work"] / f"{SAMPLE}.wav"
    sf.write(path, read_audio(DATA / f"{SAMPLE}.flac"), 16000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def driver(browser_stack, wav):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1000",
                 f"--user-data-dir={browser_stack['work'] / 'chromium-profile'}"):
        opts.add_argument(flag)
    d = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        yield d
    finally:
        d.quit()


def _wait(driver, script: str, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script}")
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {script}: status {driver.execute_script('return mtasr.status')!r}")


def test_microphone_transcript_equals_mtasr_client(browser_stack, driver):
    from selenium.webdriver.common.by import By

    driver.get(browser_stack["gw"].url("/", "http"))
    driver.find_element(By.ID, "mic-start").click()
    seconds = len(read_audio(DATA / f"{SAMPLE}.flac")) / 16000 + 0.5
    _wait(driver, f"mtasr.sentSamples >= {int(seconds * 16000)}", 60)
    driver.find_element(By.ID, "stop").click()
    got = _wait(driver, "mtasr.transcript", 60)
    assert driver.execute_script("return mtasr.errors") == []
    assert driver.execute_script("return mtasr.closed.code") == 1000
    sent = np.frombuffer(base64.b64decode(driver.execute_script("return mtasr.sentBase64()")), "<i2")
    assert sent.size >= seconds * 16000 and np.abs(sent).max() > 1000  # the sample, not silence
    want = stream_audio(browser_stack["triton"].grpc_url, as_float(sent), session_id="browser").seglst
    assert want and len({s["speaker"] for s in want}) >= 2
    assert got == want
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / "page_microphone.png"))
    colours = driver.execute_script("return [...document.querySelectorAll('#transcript .seg')]"
                                    ".map(e => e.style.color)")
    assert len(colours) == len(got) and len(set(colours)) >= 2  # speakers in their own colours
    assert driver.execute_script("return mtasr.activity.length") * 0.08 >= seconds - 1.0


def test_file_picker_streams_in_real_time_equal_to_mtasr_client(browser_stack, driver, wav):
    from selenium.webdriver.common.by import By

    driver.get(browser_stack["gw"].url("/", "http"))
    t0 = time.monotonic()
    driver.find_element(By.ID, "file").send_keys(str(wav))
    got = _wait(driver, "mtasr.transcript", 90)
    took = time.monotonic() - t0
    audio = read_audio(DATA / f"{SAMPLE}.flac")
    assert took >= len(audio) / 16000 - 0.5  # real time, not as fast as possible
    want = stream_audio(browser_stack["triton"].grpc_url, audio, session_id="browser").seglst
    assert got == want
    assert_same_seglst(got, stream_audio(browser_stack["triton"].grpc_url, as_float(pcm16(audio)),
                                         session_id="browser").seglst)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / "page_file.png"))
