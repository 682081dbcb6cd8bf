"""The local feedback page: its API guards, and end to end in headless Chromium (Playwright)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sqlite3
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clients import web
from clients.app import ClientDevice
from fedrlhf.errors import DataError
from fedrlhf.feedback import Preference, Rating
from fedrlhf.feedback import store as store_mod
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


def raw_post(srv: web.FeedbackServer, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST ``body`` as it is (not JSON-encoded here); (status, JSON reply)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        headers = {"Content-Type": "application/json", "X-Fedrlhf-Token": srv.token}
        conn.request("POST", path, body=body, headers=headers)
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


CARD, MAIL = "4111 1111 1111 1111", "carol@example.com"
LEGACY = [{"id": "0123abcd", "prompt": f"pay with {CARD}", "responses": [f"sure, mail {MAIL}"]}]


def _device_bytes(client: ClientDevice) -> bytes:
    return b"".join(p.read_bytes() for p in client.root.rglob("*") if p.is_file())


def test_the_queue_is_encrypted_and_scrubbed_at_rest(client) -> None:
    item = web.enqueue(client, f"my card is {CARD}", [f"I will mail {MAIL}", "No."])
    assert item.prompt == "my card is <CREDIT_CARD>" and item.responses == ("I will mail <EMAIL>", "No.")
    assert web.pending(client) == [item]
    assert not (client.root / web.QUEUE_FILE).exists()
    raw = _device_bytes(client)
    assert b"4111" not in raw and MAIL.encode() not in raw and b"my card" not in raw


def test_a_plaintext_queue_json_is_migrated_scrubbed_and_deleted(client) -> None:
    (client.root / web.QUEUE_FILE).write_text(json.dumps(LEGACY))
    (client.root / f"{web.QUEUE_FILE}.lock").touch()
    (item,) = web.pending(client)
    assert (item.id, item.prompt, item.responses) == (
        "0123abcd",
        "pay with <CREDIT_CARD>",
        ("sure, mail <EMAIL>",),
    )
    assert not list(client.root.glob("*queue.json*"))
    raw = _device_bytes(client)
    assert b"4111" not in raw and MAIL.encode() not in raw
    assert web.answer(client, "0123abcd", label=1) == 1 and web.pending(client) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1", "not valid JSON"),
        ('{"items": []}', "must hold a JSON list"),
        ("[1]", "item 1 is not"),
        ('[{"id": "a", "prompt": "p", "responses": ["x", "y", "z"]}]', "item 1: give a prompt and one"),
        ("[" * 5000 + "]" * 5000, "not valid JSON"),
    ],
)
def test_a_malformed_queue_json_is_one_error_naming_it(client, text, message) -> None:
    path = client.root / web.QUEUE_FILE
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        web.pending(client)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    assert path.read_text() == text  # left for the user to fix


def test_a_symlinked_queue_json_is_refused_and_its_target_untouched(client, tmp_path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(LEGACY))
    (client.root / web.QUEUE_FILE).symlink_to(target)
    with pytest.raises(DataError, match="queue.json: is not a regular file"):
        web.pending(client)
    assert json.loads(target.read_text()) == LEGACY


def test_the_page_scrubs_outside_its_lock(server, client, monkeypatch) -> None:
    """The scrubber (slow on long input) never runs while the page holds its one-judgement lock."""
    held: list[bool] = []

    def watch(real: Any) -> Any:
        def scrub(text: str) -> str:
            held.append(server.lock.locked())
            return real(text)

        return scrub

    monkeypatch.setattr(web, "scrub", watch(web.scrub))
    monkeypatch.setattr(store_mod, "scrub_text", watch(store_mod.scrub_text))
    item = web.enqueue(client, PROMPT, [ANSWER])
    held.clear()
    status, _ = request(server, "/api/feedback", {"item": item.id, "label": 1, "reason": f"mail {MAIL}"})
    assert status == 200 and held and not any(held)
    with client.store() as store:
        assert [s.record for s in store.list()] == [Rating(PROMPT, ANSWER, 1, "mail <EMAIL>")]


def test_a_corrupt_queue_is_a_json_error_not_a_dropped_connection(server, client) -> None:
    (client.root / web.QUEUE_FILE).write_text("[{")
    status, reply = request(server, "/api/state")
    assert status == 400 and "queue.json" in reply["error"] and "not valid JSON" in reply["error"]


def test_a_damaged_queued_item_is_skipped_counted_and_droppable(server, client) -> None:
    bad, good = web.enqueue(client, "p", ["one"]), web.enqueue(client, "q", ["two"])
    with sqlite3.connect(client.root / "feedback.db") as conn:
        conn.execute("UPDATE pending SET nonce = zeroblob(12) WHERE id = ?", (bad.id,))
    status, state = request(server, "/api/state")
    assert status == 200 and state["item"]["id"] == good.id and (state["waiting"], state["damaged"]) == (1, 1)
    assert request(server, "/api/skip", {"item": bad.id})[0] == 200
    assert request(server, "/api/state")[1]["damaged"] == 0


@pytest.mark.parametrize("ledger", ["{", "[]", "[" * 100_000 + "]" * 100_000])
def test_a_corrupt_ledger_is_shown_not_fatal(server, client, ledger) -> None:
    (client.root / "privacy_ledger.json").write_text(ledger)
    web.enqueue(client, PROMPT, [ANSWER])
    status, state = request(server, "/api/state")
    assert status == 200 and state["item"]["prompt"] == PROMPT and state["budget"]["error"]


def test_a_deeply_nested_body_is_a_json_error(server, client) -> None:
    item = web.enqueue(client, PROMPT, [ANSWER])
    deep = b"[" * 30_000 + b"]" * 30_000  # under MAX_BODY, far over the parser's recursion limit
    status, reply = raw_post(server, "/api/feedback", deep)
    assert status == 400 and "nested too deeply" in reply["error"]
    status, reply = raw_post(server, "/api/feedback", b'{"item": "%s", "label": true}' % item.id.encode())
    assert status == 400 and "thumbs up" in reply["error"]
    assert request(server, "/api/feedback", {"item": item.id, "label": 1})[0] == 200  # still serving


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


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory: pytest.TempPathFactory, tiny_bert: str) -> Path:
    from fedrlhf.config import ModelConfig
    from fedrlhf.models import RewardModel

    path = tmp_path_factory.mktemp("rm") / "reward-model"
    RewardModel.build(
        ModelConfig(backbone=tiny_bert, max_length=32, trainable="head"), seed=3
    ).save_pretrained(path)
    return path


def test_ranked_answers_queue_the_reward_models_best_two_with_their_scores(
    client: ClientDevice, server: web.FeedbackServer, reward_model: Path
) -> None:
    """Issue 26: the page shows a reward model's ranking; the user's pick is an A/B preference."""
    from fedrlhf.models import RewardModel
    from fedrlhf.rerank import rank

    answers = ["Boil it for nine minutes.", "No idea.", "Put it in cold water, boil, wait 7 min.", "No idea."]
    item, ranked = web.enqueue_ranked(client, "Boil an egg?", answers, reward_model)
    want = rank(RewardModel.from_pretrained(str(reward_model)), ["Boil an egg?"], [answers[:3]])[0].scores
    assert sorted(want, reverse=True) == [s for s, _ in ranked] and len(ranked) == 3  # the duplicate once
    assert list(item.responses) == [t for _, t in ranked[:2]] and list(item.scores) == [
        s for s, _ in ranked[:2]
    ]
    state = request(server, "/api/state")[1]
    assert state["item"]["scores"] == list(item.scores) and state["item"]["responses"] == list(item.responses)
    assert web.answer(client, item.id, choice="b") > 0  # the user prefers the runner-up
    with client.store() as store:
        (stored,) = [r.record for r in store.list()]
    assert (
        isinstance(stored, Preference) and stored.chosen == ranked[1][1] and stored.rejected == ranked[0][1]
    )
    with pytest.raises(DataError, match="at least two different responses"):
        web.enqueue_ranked(client, "Boil an egg?", ["same", "same"], reward_model)


def test_a_stored_item_without_scores_still_opens(client: ClientDevice) -> None:
    item = web.enqueue(client, "2+2?", ["4", "5"])
    assert item.scores == () and "scores" not in item.to_json()
    with pytest.raises(DataError, match="one finite number per response"):
        web.enqueue(client, "2+2?", ["4", "5"], scores=[1.0, float("nan")])
