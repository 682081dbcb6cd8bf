"""A local web page to judge responses: thumbs up/down or A/B, an optional reason, the privacy budget.

:func:`make_server` serves it on 127.0.0.1 only (never another interface), from the
standard library: one HTML page with inline script and style (nothing is fetched from
elsewhere) and three JSON endpoints::

    GET  /api/state      {"item": next waiting item or null, "waiting": n, "budget": {...}}
                         (an item: {"id", "prompt", "responses", and "scores" when a reward model
                         ranked them: ``fedrlhf-client queue --reward-model DIR``})
    POST /api/feedback   {"item": id, "label": 1 | -1 | null, "choice": "a" | "b" | null, "reason": str}
    POST /api/skip       {"item": id}

What to judge is queued by the assistant app (:func:`enqueue`, ``fedrlhf-client queue``)
in the encrypted store's ``pending`` table, scrubbed; a judged item leaves the queue as its
feedback enters the store, in one transaction.  A plaintext ``DIR/queue.json`` left by an
earlier version is moved into the store on first use and deleted.  Other web sites open in the same browser
cannot use the endpoints: every API call needs a per-server token that only this page
holds, the Host header must name the loopback address (no DNS rebinding), and a
foreign Origin is refused.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import webbrowser
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from clients.app import MAX_TEXT, ClientDevice, budget
from clients.web_page import PAGE
from fedrlhf.errors import DataError, FedRLHFError
from fedrlhf.feedback import Preference, Rating
from fedrlhf.feedback.pii import scrub
from fedrlhf.feedback.store import PendingItem, Rows

__all__ = ["FeedbackServer", "QueueItem", "answer", "enqueue", "make_server", "pending", "serve", "skip"]

QUEUE_FILE = "queue.json"  # the plaintext queue of earlier versions, migrated into the store
MAX_BODY = 64 * 1024

# --------------------------------------------------------------------------- the queue

QueueItem = PendingItem  # the queue lives in the encrypted store's ``pending`` table


def _read_legacy_queue(path: Path) -> list[dict[str, Any]]:
    """The items of a plaintext ``queue.json`` written by earlier versions; one-line errors naming it."""
    if path.is_symlink() or not path.is_file():
        raise DataError("is not a regular file; move it away", path=str(path))
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise DataError(f"cannot read the queue ({why}); fix or delete the file", path=str(path)) from None
    if not isinstance(items, list):
        raise DataError("must hold a JSON list of queued items; fix or delete the file", path=str(path))
    for n, item in enumerate(items, 1):
        fields = (item.get("id"), item.get("prompt"), item.get("responses")) if isinstance(item, dict) else ()
        if [type(f) for f in fields] != [str, str, list]:
            raise DataError(
                f'item {n} is not {{"id": str, "prompt": str, "responses": [str]}}; fix or delete the file',
                path=str(path),
            )
    return items


def _shred(path: Path) -> None:
    """Move ``path`` aside (readers see all of it or nothing), overwrite it with zeros, delete it."""
    aside = path.with_name(f".{path.name}.{secrets.token_hex(6)}.old")
    try:
        os.replace(path, aside)
    except FileNotFoundError:  # another process migrated it first
        return
    try:
        with open(os.open(aside, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)), "wb") as f:
            f.write(bytes(os.fstat(f.fileno()).st_size))
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        pass  # best effort: it is deleted below either way
    finally:
        aside.unlink(missing_ok=True)


def _migrate_legacy_queue(client: ClientDevice) -> None:
    """Move a plaintext ``queue.json`` into the store, scrubbed and encrypted, then delete it."""
    path = client.root / QUEUE_FILE
    if not (path.exists() or path.is_symlink()):
        return
    items = _read_legacy_queue(path)
    with client.store() as store:
        for n, item in enumerate(items, 1):
            try:
                store.add_pending(item["prompt"], item["responses"], item_id=item["id"])
            except DataError as exc:
                raise DataError(f"item {n}: {exc}; fix or delete the file", path=str(path)) from None
    _shred(path)
    (client.root / f"{QUEUE_FILE}.lock").unlink(missing_ok=True)


def enqueue(
    client: ClientDevice, prompt: str, responses: Sequence[str], scores: Sequence[float] = ()
) -> QueueItem:
    """Add a prompt with one response (to rate) or two different ones (to compare), scrubbed and
    encrypted; ``scores``: a reward model's score of each, shown beside them on the page."""
    if len(responses) not in (1, 2):
        raise DataError(f"give one response (thumbs up/down) or two (A/B), not {len(responses)}")
    if len(responses) == 2 and responses[0] == responses[1]:
        raise DataError("the two responses are identical; an A/B choice needs different ones")
    for name, text in (("prompt", prompt), *(("response", r) for r in responses)):
        if not isinstance(text, str) or (name == "response" and not text.strip()):
            raise DataError("must be non-empty text", field=name)
        if len(text) > MAX_TEXT:
            raise DataError(f"is {len(text)} characters long; the limit is {MAX_TEXT}", field=name)
    _migrate_legacy_queue(client)
    with client.store() as store:
        return store.add_pending(prompt, responses, scores=scores)


def enqueue_ranked(
    client: ClientDevice, prompt: str, responses: Sequence[str], reward_model: str | Path
) -> tuple[QueueItem, list[tuple[float, str]]]:
    """Rank ``responses`` with the reward model saved in ``reward_model`` (best-of-n, scored as
    ``fedrlhf rerank`` scores them) and queue its two best as an A/B item, best first, with
    their scores: the page shows them ranked and the user's pick becomes an A/B preference.
    Returns the item and every response's ``(score, text)``, best first.

    Raises:
        DataError: fewer than two different responses, or one the reward model cannot score.
    """
    from fedrlhf.models.reward import RewardModel
    from fedrlhf.rerank import rank

    distinct = list(dict.fromkeys(responses))
    if len(distinct) < 2:
        raise DataError("give at least two different responses to rank", field="response")
    model = RewardModel.from_pretrained(str(reward_model))
    scores = rank(model, [prompt], [distinct])[0].scores
    ranked = sorted(zip(scores, distinct, strict=True), key=lambda pair: -pair[0])
    (best, a), (second, b) = ranked[:2]
    return enqueue(client, prompt, [a, b], scores=[best, second]), ranked


def pending(client: ClientDevice) -> Rows[QueueItem]:
    """Items still waiting, oldest first; ``corrupt`` names items that failed authentication."""
    _migrate_legacy_queue(client)
    with client.store() as store:
        return store.pending()


def _clean_reason(reason: object) -> str | None:
    """The user's reason, stripped, length-checked and scrubbed (``None`` when empty)."""
    if not isinstance(reason, str) or not reason.strip():
        return None
    if len(reason) > MAX_TEXT:
        raise DataError(f"is {len(reason)} characters long; the limit is {MAX_TEXT}", field="reason")
    return scrub(reason.strip())


def _judgement(item: QueueItem, label: object, choice: object, reason: str | None) -> Rating | Preference:
    if len(item.responses) == 1:
        if isinstance(label, bool) or label not in (1, -1) or choice is not None:
            raise DataError("this item takes a thumbs up (+1) or down (-1)", field="label")
        return Rating(item.prompt, item.responses[0], 1 if label == 1 else -1, reason)
    if choice not in ("a", "b") or label is not None:
        raise DataError("this item takes an A/B choice: 'a' or 'b'", field="choice")
    a, b = item.responses
    chosen, rejected = (a, b) if choice == "a" else (b, a)
    return Preference(item.prompt, chosen, rejected, reason)


def answer(
    client: ClientDevice,
    item_id: str,
    *,
    label: int | None = None,
    choice: str | None = None,
    reason: str | None = None,
    lock: AbstractContextManager[Any] | None = None,
) -> int:
    """Store the user's judgement of a waiting item: thumbs ``label`` (+1/-1) or A/B ``choice``.

    The reason is scrubbed first, outside ``lock``; under it the item leaves the queue and its
    record enters the store in one transaction (queued texts were scrubbed when queued).
    """
    clean = _clean_reason(reason)
    _migrate_legacy_queue(client)
    with lock or nullcontext(), client.store(scrub=False) as store:
        item = store.get_pending(item_id)
        return store.add(_judgement(item, label, choice, clean), pending_id=item.id)


def skip(client: ClientDevice, item_id: str) -> None:
    """Drop a waiting item without giving feedback (a damaged one too: nothing is decrypted)."""
    _migrate_legacy_queue(client)
    with client.store() as store:
        if not store.remove_pending(item_id):
            raise DataError(f"no waiting item {item_id!r} (already judged?)", field="item")


# --------------------------------------------------------------------------- the server


class FeedbackServer(ThreadingHTTPServer):
    """The page's HTTP server, bound to 127.0.0.1; ``token`` authorises its API calls."""

    daemon_threads = True

    def __init__(self, client: ClientDevice, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.client = client
        self.token = secrets.token_urlsafe(32)
        self.lock = threading.Lock()  # one judgement at a time

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def state(self) -> dict[str, Any]:
        """What the page shows: the next waiting item, how many wait (and are damaged), the privacy budget."""
        items = pending(self.client)
        try:
            spent = budget(self.client)
            money: dict[str, Any] = {**spent.to_json(), "text": spent.describe()}
        except (FedRLHFError, OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            money = {"error": str(exc) or type(exc).__name__}  # a damaged ledger: shown, not fatal
        return {
            "item": items[0].to_json() if items else None,
            "waiting": len(items),
            "damaged": len(items.corrupt),
            "budget": money,
        }


class _Handler(BaseHTTPRequestHandler):
    server: FeedbackServer
    server_version = "fedrlhf-client"

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Log nothing: request lines would leave traces of use on the device."""

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
            **(extra or {}),
        }
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _reply(self, handle: Callable[[], Any]) -> None:
        """Send ``handle()`` as JSON; any failure becomes a JSON error, never a dropped connection."""
        try:
            status, obj = HTTPStatus.OK, handle()
        except (FedRLHFError, ValueError, RecursionError) as exc:
            status, obj = HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the page shows it; the server keeps serving
            status, obj = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"}
        self._json(status, obj)

    def _refusal(self, *, api: bool) -> str | None:
        """Why this request is refused (foreign Host, Origin or missing token), or None."""
        local = {f"127.0.0.1:{self.server.port}", f"localhost:{self.server.port}"}
        if self.headers.get("Host", "") not in local:
            return "this page answers on 127.0.0.1 only"
        origin = self.headers.get("Origin")
        if origin is not None and origin.removeprefix("http://") not in local:
            return "cross-origin requests are refused"
        given = self.headers.get("X-Fedrlhf-Token", "")
        if api and not secrets.compare_digest(given.encode(), self.server.token.encode()):
            return "missing or wrong page token: reload the page"
        return None

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        why = self._refusal(api=self.path.startswith("/api/"))
        if why:
            self._json(HTTPStatus.FORBIDDEN, {"error": why})
        elif self.path in ("/", "/index.html"):
            nonce = secrets.token_urlsafe(16)
            csp = (
                f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                "frame-ancestors 'none'"
            )
            page = PAGE.replace("{{NONCE}}", nonce).replace("{{TOKEN}}", self.server.token)
            self._send(
                HTTPStatus.OK, page.encode(), "text/html; charset=utf-8", {"Content-Security-Policy": csp}
            )
        elif self.path == "/api/state":
            self._reply(self.server.state)
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def _body(self) -> dict[str, Any]:
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            raise DataError("send JSON (Content-Type: application/json)")
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            raise DataError(f"the request body must be 1 to {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length))
        except RecursionError:
            raise DataError("the request body is nested too deeply") from None
        except ValueError:
            raise DataError("the request body is not valid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("item"), str):
            raise DataError("expected a JSON object with an 'item' id")
        return body

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        why = self._refusal(api=True)
        if why:
            self._json(HTTPStatus.FORBIDDEN, {"error": why})
            return
        if self.path not in ("/api/feedback", "/api/skip"):
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        self._reply(self._post)

    def _post(self) -> dict[str, Any]:
        body, client, lock = self._body(), self.server.client, self.server.lock
        if self.path == "/api/skip":
            with lock:
                skip(client, body["item"])
            saved = None
        else:  # the reason is scrubbed before answer() takes the lock
            saved = answer(
                client,
                body["item"],
                label=body.get("label"),
                choice=body.get("choice"),
                reason=body.get("reason"),
                lock=lock,
            )
        return {"saved": saved, "state": self.server.state()}


def make_server(client: ClientDevice, *, port: int = 0) -> FeedbackServer:
    """A server for ``client``'s page on 127.0.0.1:``port`` (0: a free port); call ``serve_forever``."""
    return FeedbackServer(client, port)


def serve(client: ClientDevice, *, port: int = 8765, open_browser: bool = False) -> None:
    """Serve the page until Ctrl-C."""
    server = make_server(client, port=port)
    print(f"feedback page on {server.url} (this device only; Ctrl-C to stop)", flush=True)
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
