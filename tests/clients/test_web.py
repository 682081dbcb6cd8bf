"""The local feedback page: its API guards, and end to end in headless Chromium (Playwright)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clients import web
from clients.app import ClientDevice
from fedrlhf.feedback import Preference, Rating
from fedrlhf.privacy.ledger import PrivacyLedger

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROMPT = "How do I boil an egg?"
ANSWER = "Put it in boiling water for 8 minutes, then cool it in cold water."
A, B = "Eggs are a kind of food.", "Boil water, add the egg, wait 8 minutes, cool it."


@pytest.fixture()
def client(tmp_path: Path) -> ClientDevice:
    return ClientDevice.init(tmp_path / "device")


@pytest.fixture()
def server(client: ClientDevice) -> Iterator[web.FeedbackServer]:
    srv = web.make_server(client, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


def request(
    srv: web.FeedbackServer,
    path: str,
    body: Any = None,
    *,
    token: str | None = "",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a request to the page's API; ``token=""`` sends the right token."""
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        hdrs["X-Fedrlhf-Token"] = token or srv.token
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(srv.url.rstrip("/") + path, data=data, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_server_binds_to_loopback_only(server) -> None:
    assert server.server_address[0] == "127.0.0.1"


def test_page_is_self_contained_with_a_strict_csp(server) -> None:
    with urllib.request.urlopen(server.url, timeout=30) as reply:
        page, csp = reply.read().decode(), reply.headers["Content-Security-Policy"]
    assert server.token in page and "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "http://" not in page and "https://" not in page  # no external scripts, styles or fonts


def test_api_refuses_other_origins_hosts_and_missing_tokens(server, client) -> None:
    item = web.enqueue(client, PROMPT, [ANSWER])
    vote = {"item": item.id, "label": 1}
    assert request(server, "/api/state", token=None)[0] == 403
    assert request(server, "/api/feedback", vote, token="wrong")[0] == 403
    assert request(server, "/api/feedback", vote, headers={"Origin": "https://evil.example"})[0] == 403
    assert request(server, "/api/feedback", vote, headers={"Host": "evil.example:80"})[0] == 403
    assert [i.id for i in web.pending(client)] == [item.id]


def test_api_records_feedback_and_rejects_bad_input(server, client) -> None:
    single, pair = web.enqueue(client, PROMPT, [ANSWER]), web.enqueue(client, PROMPT, [A, B])
    status, state = request(server, "/api/state")
    assert status == 200 and state["item"]["id"] == single.id and state["waiting"] == 2
    assert state["budget"]["spent"] == 0 and state["budget"]["lifetime"] == 8.0
    status, reply = request(server, "/api/feedback", {"item": single.id, "choice": "a"})
    assert status == 400 and "thumbs up" in reply["error"]
    assert request(server, "/api/feedback", {"item": "nope", "label": 1})[0] == 400
    status, reply = request(server, "/api/feedback", {"item": single.id, "label": -1, "reason": "  "})
    assert status == 200 and reply["state"]["item"]["id"] == pair.id
    assert request(server, "/api/skip", {"item": pair.id})[0] == 200
    with client.store() as store:
        assert [s.record for s in store.list()] == [Rating(PROMPT, ANSWER, -1, None)]
    assert web.pending(client) == []


def _browser_or_skip() -> Any:
    if not CHROMIUM.is_file():
        pytest.skip("no Chromium at /usr/bin/chromium: apt-get install -y chromium (CI installs it)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed: pip install playwright (CI has it)"
    )
    return sync_api


def _screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """Save a screenshot in the test's tmp dir and, if $FEDRLHF_SCREENSHOT_DIR is set, there too."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("FEDRLHF_SCREENSHOT_DIR"):
        out = Path(os.environ["FEDRLHF_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / name)
    return path


def test_end_to_end_in_headless_chromium(server, client, tmp_path) -> None:
    sync_api = _browser_or_skip()
    ledger = PrivacyLedger(client.root / "privacy_ledger.json", delta=1e-5, lifetime_epsilon=None)
    ledger.record(noise_multiplier=1.1, sample_rate=0.05, steps=200, label="round-1")
    spent = ledger.spent()
    web.enqueue(client, PROMPT, [ANSWER])
    web.enqueue(client, "How do I cook an egg?", [A, B])
    outside, problems = [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 800})
            page.set_default_timeout(30_000)
            page.on("request", lambda r: None if r.url.startswith(server.url) else outside.append(r.url))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(server.url)
            page.wait_for_selector("#response", state="visible")
            assert page.inner_text("#response") == ANSWER and page.inner_text("#prompt") == PROMPT
            budget = page.inner_text("#budget-text")
            assert f"ε spent {spent:.3g} of 8" in budget and f"remaining {8 - spent:.3g}" in budget
            page.fill("#reason", "Clear steps. Write me at carol@example.com")
            _screenshot(page, tmp_path, "web-thumbs.png")
            page.click("#thumb-up")
            page.wait_for_selector("#choose-b", state="visible")
            assert page.inner_text("#status") == "Saved: thumbs up."
            assert page.input_value("#reason") == "" and page.is_hidden("#thumbs")
            _screenshot(page, tmp_path, "web-ab.png")
            page.click("#choose-b")
            page.wait_for_selector("#empty", state="visible")
            assert page.inner_text("#status") == "Saved: you chose B."
        finally:
            browser.close()
    assert outside == [] and problems == []
    with client.store() as store:
        records = [s.record for s in store.list()]
    assert records == [
        Rating(PROMPT, ANSWER, 1, "Clear steps. Write me at <EMAIL>"),
        Preference("How do I cook an egg?", B, A, None),
    ]
    assert (tmp_path / "web-thumbs.png").stat().st_size > 10_000
