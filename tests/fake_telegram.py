"""A local fake of the Telegram Bot API over real HTTP, for tests that fake only the network edge.

    import requests
    from tests.fake_telegram import FakeTelegram

    with FakeTelegram() as tg:                       # token "123456:TEST-TOKEN"
        api = f"{tg.url}/bot{tg.token}"              # as https://api.telegram.org/bot<token>
        requests.post(f"{api}/sendMessage", json={"chat_id": 42, "text": "Filled"}).json()
        # -> {"ok": true, "result": {"message_id": 1, "from": {...bot...}, "chat": {"id": 42, ...}, ...}}
        tg.user_says(42, "/status")                   # an incoming message; wakes a waiting long poll
        requests.get(f"{api}/getUpdates", params={"offset": 0, "timeout": 5}).json()

Wire behaviour, as the real Bot API (https://core.telegram.org/bots/api):
- URL `/bot<token>/<method>`; method names are matched case-insensitively, as Telegram does.
- Parameters from the query string (GET or POST) and from an application/json,
  application/x-www-form-urlencoded or multipart/form-data body. In form bodies, objects (reply_markup,
  allowed_updates) are JSON-serialized strings and booleans are "true"/"false".
- Every answer is JSON with "ok"; failures carry "error_code" and "description" (429 also
  "parameters": {"retry_after": N}), with the same HTTP status.
- getMe; sendMessage (chat_id, text, parse_mode, disable_web_page_preview, link_preview_options,
  reply_markup, ...); getUpdates (offset, limit, timeout long polling, allowed_updates);
  setMyCommands; deleteWebhook (drop_pending_updates); anything else: 404 Not Found.
- getUpdates: updates with update_id < offset are confirmed and forgotten; a negative offset keeps only the
  last -offset updates. A second getUpdates while one is long polling ends the first with
  409 "Conflict: terminated by other getUpdates request; ...", as Telegram does when two bot instances poll.
- Wrong token: 401 Unauthorized. sendMessage: no chat_id -> 400 "Bad Request: chat_id is empty"; no or blank
  text -> 400 "Bad Request: message text is empty"; text over 4096 characters -> 400 "Bad Request: message is
  too long"; a parse_mode other than HTML/Markdown/MarkdownV2 -> 400 "Bad Request: unsupported parse_mode";
  a chat passed to block_chat() -> 403 "Forbidden: bot was blocked by the user".

Control API (in-process, thread-safe): user_says, sent, wait_for_sent, fail_next, calls, block_chat,
unblock_chat, wait_for_poll, commands, requests.

Not modelled: entity parsing of parse_mode markup (the returned Message's text is the text as sent, HTML
tags stripped for parse_mode="HTML"), webhooks, files, groups/channels (every chat is a private chat), flood
limits other than fail_next(..., status=429).
"""
from __future__ import annotations

import email.parser
import email.policy
import html
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["FakeTelegram", "DESCRIPTIONS"]

DESCRIPTIONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    420: "Flood",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
MAX_TEXT = 4096
PARSE_MODES = {"html": "HTML", "markdown": "Markdown", "markdownv2": "MarkdownV2"}
CONFLICT = ("Conflict: terminated by other getUpdates request; make sure that only one bot instance is "
            "running")


class _ApiError(Exception):
    def __init__(self, status: int, description: str, parameters: dict | None = None) -> None:
        super().__init__(description)
        self.status, self.description, self.parameters = status, description, parameters


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value)


def _as_int(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _ApiError(400, f"Bad Request: invalid {name} specified") from None


def _as_json(value: Any) -> Any:
    """Form bodies carry objects as JSON-serialized strings; JSON bodies carry them as objects."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise _ApiError(400, "Bad Request: can't parse JSON object") from None
    return value


def _chat_id(value: Any) -> int | str:
    if isinstance(value, bool):
        raise _ApiError(400, "Bad Request: chat not found")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text.startswith("@"):
        return text
    raise _ApiError(400, "Bad Request: chat not found")


class FakeTelegram:
    """A Telegram Bot API server on 127.0.0.1 (a free port), served by daemon threads.

    FakeTelegram(token="123456:TEST-TOKEN", *, first_name="Algo", username="algo_test_bot",
                 first_update_id=100000001)
    Use as a context manager (or start()/stop()). `.url` is "http://127.0.0.1:<port>", `.token` the bot's token,
    `.api` is f"{url}/bot{token}", `.bot` the bot's User object (its id is the token's number part)."""

    def __init__(self, token: str = "123456:TEST-TOKEN", *, first_name: str = "Algo",
                 username: str = "algo_test_bot", first_update_id: int = 100000001) -> None:
        self.token = token
        bot_id = token.split(":", 1)[0]
        self.bot = {"id": int(bot_id) if bot_id.isdigit() else 123456, "is_bot": True,
                    "first_name": first_name, "username": username}
        self._cond = threading.Condition()
        self._updates: list[dict] = []          # pending (unconfirmed) updates, oldest first
        self._next_update_id = first_update_id
        self._next_message_id: dict[int | str, int] = {}  # message ids count per chat, as in Telegram
        self._sent: list[dict] = []
        self._calls: dict[str, int] = {}
        self._failures: dict[str, list] = {}    # method (lower case) -> [times_left, status, description, params]
        self._blocked: set = set()
        self._chat_names: dict[int | str, str] = {}
        self._allowed_updates: list[str] = []
        self._commands: list[dict] = []
        self._requests: list[tuple[str, str, dict]] = []
        self._poll_generation = 0               # a new getUpdates ends a waiting one with 409
        self._polling = 0
        self._closed = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ----------------------------------------------------------------------------------------- lifecycle
    def start(self) -> "FakeTelegram":
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-telegram", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeTelegram":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def api(self) -> str:
        return f"{self.url}/bot{self.token}"

    # ----------------------------------------------------------------------------------------- control API
    def user_says(self, chat_id: int, text: str, user_id: int | None = None,
                  first_name: str = "Trader") -> dict:
        """A user writes `text` to the bot in the private chat `chat_id`: queues a message Update (and wakes
        a waiting long poll). Returns the Update. `user_id` defaults to `chat_id` (in a private chat the
        chat id is the user's id)."""
        user = {"id": int(user_id if user_id is not None else chat_id), "is_bot": False,
                "first_name": first_name}
        with self._cond:
            self._chat_names[chat_id] = first_name
            message = {"message_id": self._take_message_id(chat_id), "from": user,
                       "chat": {"id": chat_id, "first_name": first_name, "type": "private"},
                       "date": int(time.time()), "text": text}
            command = re.match(r"/[A-Za-z0-9_]+(@[A-Za-z0-9_]+)?", text)
            if command:
                message["entities"] = [{"offset": 0, "length": len(command.group(0)), "type": "bot_command"}]
            update = {"update_id": self._next_update_id, "message": message}
            self._next_update_id += 1
            self._updates.append(update)
            self._cond.notify_all()
        return update

    def sent(self, chat_id: int | str | None = None) -> list[dict]:
        """The messages the bot sent (oldest first), each {"chat_id", "text", "parse_mode", "at" (unix time,
        float), "message_id", "disable_web_page_preview", "reply_markup", "params" (all parameters)};
        only those to `chat_id` if given."""
        with self._cond:
            return [dict(m) for m in self._sent if chat_id is None or m["chat_id"] == chat_id]

    def wait_for_sent(self, count: int, chat_id: int | str | None = None, timeout: float = 10) -> bool:
        """Wait until at least `count` messages were sent (to `chat_id` if given); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(1 for m in self._sent if chat_id is None or m["chat_id"] == chat_id) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def fail_next(self, method: str, times: int = 1, status: int = 500, *, retry_after: int = 3,
                  description: str | None = None) -> None:
        """The next `times` calls of `method` (with the right token) answer HTTP `status` with Telegram's error
        JSON; for 429 "Too Many Requests: retry after N" with "parameters": {"retry_after": N}."""
        if status == 429:
            desc = description or f"Too Many Requests: retry after {retry_after}"
            params: dict | None = {"retry_after": retry_after}
        else:
            desc = description or DESCRIPTIONS.get(status, "Internal Server Error")
            params = None
        with self._cond:
            self._failures[method.lower()] = [times, status, desc, params]

    def calls(self, method: str) -> int:
        """How many requests for `method` arrived with the right token (failed ones included)."""
        with self._cond:
            return self._calls.get(method.lower(), 0)

    def block_chat(self, chat_id: int | str) -> None:
        """The user blocked the bot: sendMessage to this chat answers 403."""
        with self._cond:
            self._blocked.add(chat_id)

    def unblock_chat(self, chat_id: int | str) -> None:
        with self._cond:
            self._blocked.discard(chat_id)

    def wait_for_poll(self, timeout: float = 10) -> bool:
        """Wait until a getUpdates long poll is waiting on the server; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._polling == 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def pending_updates(self) -> list[dict]:
        """Updates not yet confirmed by a getUpdates offset."""
        with self._cond:
            return json.loads(json.dumps(self._updates))

    def commands(self) -> list[dict]:
        """The command list the last setMyCommands set."""
        with self._cond:
            return [dict(c) for c in self._commands]

    def requests(self) -> list[tuple[str, str, dict]]:
        """Every request with the right token: (method as called, HTTP verb, parameters)."""
        with self._cond:
            return list(self._requests)

    # ----------------------------------------------------------------------------------------- the API
    def _take_message_id(self, chat_id: int | str) -> int:
        self._next_message_id[chat_id] = self._next_message_id.get(chat_id, 0) + 1
        return self._next_message_id[chat_id]

    def _handle(self, token: str, method: str, verb: str, params: dict) -> dict | list | bool:
        if token != self.token:
            raise _ApiError(401, "Unauthorized")
        name = method.lower()
        with self._cond:
            self._calls[name] = self._calls.get(name, 0) + 1
            self._requests.append((method, verb, params))
            failure = self._failures.get(name)
            if failure and failure[0] > 0:
                failure[0] -= 1
                raise _ApiError(failure[1], failure[2], failure[3])
        handler = {"getme": self._get_me, "sendmessage": self._send_message, "getupdates": self._get_updates,
                   "setmycommands": self._set_my_commands, "deletewebhook": self._delete_webhook}.get(name)
        if handler is None:
            raise _ApiError(404, "Not Found")
        return handler(params)

    def _get_me(self, params: dict) -> dict:
        return {**self.bot, "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False}

    def _send_message(self, params: dict) -> dict:
        if params.get("chat_id") in (None, ""):
            raise _ApiError(400, "Bad Request: chat_id is empty")
        chat_id = _chat_id(params["chat_id"])
        text = params.get("text")
        text = "" if text is None else str(text)
        parse_mode = params.get("parse_mode") or None
        if parse_mode is not None:
            if str(parse_mode).lower() not in PARSE_MODES:
                raise _ApiError(400, "Bad Request: unsupported parse_mode")
            parse_mode = PARSE_MODES[str(parse_mode).lower()]
        shown = html.unescape(re.sub(r"<[^>]*>", "", text)) if parse_mode == "HTML" else text
        if not shown.strip():
            raise _ApiError(400, "Bad Request: message text is empty")
        if len(shown) > MAX_TEXT:
            raise _ApiError(400, "Bad Request: message is too long")
        reply_markup = _as_json(params["reply_markup"]) if params.get("reply_markup") not in (None, "") else None
        preview = params.get("disable_web_page_preview")
        with self._cond:
            if chat_id in self._blocked:
                raise _ApiError(403, "Forbidden: bot was blocked by the user")
            chat = {"id": chat_id, "type": "private"}
            if isinstance(chat_id, int) and chat_id in self._chat_names:
                chat["first_name"] = self._chat_names[chat_id]
            message = {"message_id": self._take_message_id(chat_id), "from": dict(self.bot), "chat": chat,
                       "date": int(time.time()), "text": shown}
            if reply_markup and "inline_keyboard" in reply_markup:
                message["reply_markup"] = reply_markup  # Telegram echoes inline keyboards only
            self._sent.append({"chat_id": chat_id, "text": text, "parse_mode": parse_mode, "at": time.time(),
                               "message_id": message["message_id"],
                               "disable_web_page_preview": None if preview is None else _as_bool(preview),
                               "reply_markup": reply_markup, "params": dict(params)})
            self._cond.notify_all()
        return message

    def _get_updates(self, params: dict) -> list[dict]:
        offset = _as_int(params.get("offset"), "offset")
        limit = _as_int(params.get("limit"), "limit") or 100
        limit = max(1, min(100, limit))
        timeout = _as_int(params.get("timeout"), "timeout") or 0
        allowed = params.get("allowed_updates")
        deadline = time.monotonic() + max(0, timeout)
        with self._cond:
            if allowed not in (None, ""):
                self._allowed_updates = list(_as_json(allowed) or [])
            # Confirm: updates below offset are forgotten; a negative offset keeps the last -offset ones.
            if offset is not None and offset < 0:
                self._updates = self._updates[offset:]
            elif offset is not None:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            self._poll_generation += 1
            generation = self._poll_generation
            self._cond.notify_all()             # an earlier waiting poll sees the new generation: 409
            self._polling += 1
            try:
                while True:
                    ready = [u for u in self._updates if self._wanted(u)][:limit]
                    if ready or self._closed:
                        return json.loads(json.dumps(ready))
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return []
                    self._cond.wait(left)
                    if self._poll_generation != generation:
                        raise _ApiError(409, CONFLICT)
            finally:
                self._polling -= 1

    def _wanted(self, update: dict) -> bool:
        if not self._allowed_updates:
            return True
        return any(kind in update for kind in self._allowed_updates)

    def _set_my_commands(self, params: dict) -> bool:
        commands = params.get("commands")
        if commands in (None, ""):
            raise _ApiError(400, "Bad Request: parameter \"commands\" is required")
        commands = _as_json(commands)
        if not isinstance(commands, list) or not all(
                isinstance(c, dict) and c.get("command") and c.get("description") for c in commands):
            raise _ApiError(400, "Bad Request: can't parse BotCommand")
        with self._cond:
            self._commands = [dict(c) for c in commands]
        return True

    def _delete_webhook(self, params: dict) -> bool:
        if _as_bool(params.get("drop_pending_updates", False)):
            with self._cond:
                self._updates.clear()
        return True


class _Handler(BaseHTTPRequestHandler):
    fake: FakeTelegram
    protocol_version = "HTTP/1.1"   # keep-alive, as api.telegram.org; every answer has a Content-Length
    server_version = "nginx/1.18.0"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, verb: str) -> None:
        parts = urlsplit(self.path)
        match = re.fullmatch(r"/bot([^/]*)/([^/]*)", parts.path)
        try:
            params = self._params(verb, parts.query)
            if not match or not match.group(2):
                raise _ApiError(404, "Not Found")
            result = self.fake._handle(match.group(1), match.group(2), verb, params)
            self._answer(200, {"ok": True, "result": result})
        except _ApiError as err:
            body: dict[str, Any] = {"ok": False, "error_code": err.status, "description": err.description}
            if err.parameters:
                body["parameters"] = err.parameters
            self._answer(err.status, body)

    def _params(self, verb: str, query: str) -> dict:
        params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return params
        ctype = (self.headers.get("Content-Type") or "").lower()
        if ctype.startswith("application/json"):
            try:
                body = json.loads(raw.decode("utf-8"))
            except ValueError:
                raise _ApiError(400, "Bad Request: can't parse JSON object") from None
            if not isinstance(body, dict):
                raise _ApiError(400, "Bad Request: can't parse JSON object")
            params.update(body)
        elif ctype.startswith("application/x-www-form-urlencoded"):
            params.update(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        elif ctype.startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if name:
                    payload = part.get_payload(decode=True) or b""
                    params[name] = payload.decode(part.get_content_charset() or "utf-8", "replace")
        return params

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Access-Control-Allow-Origin", "*")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
