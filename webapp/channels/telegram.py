"""Telegram's Bot API over HTTPS (https://core.telegram.org/bots/api): sendMessage, getUpdates (long
polling), getMe. Every answer is {"ok": bool, "result" | "error_code", "description", "parameters"}."""
from __future__ import annotations

import requests

from webapp.channels import ChannelError

TIMEOUT_SECONDS = 10


class TelegramBot:
    def __init__(self, api_root: str, token: str) -> None:
        self.base = f"{api_root.rstrip('/')}/bot{token}"
        self.http = requests.Session()

    def _call(self, method: str, payload: dict, timeout: float = TIMEOUT_SECONDS) -> object:
        try:
            answer = self.http.post(f"{self.base}/{method}", json=payload, timeout=timeout)
        except requests.RequestException as exc:
            raise ChannelError(f"Telegram unreachable: {exc.__class__.__name__}") from exc
        try:
            body = answer.json()
        except ValueError:
            body = {"ok": False, "description": answer.text[:200]}
        if answer.status_code == 200 and body.get("ok"):
            return body.get("result")
        description = body.get("description") or f"HTTP {answer.status_code}"
        retry_after = (body.get("parameters") or {}).get("retry_after")
        # 429 and 5xx pass; 400/401/403/404 (a bad chat, a blocked bot, a wrong token) will not get better.
        retry = answer.status_code == 429 or answer.status_code >= 500
        raise ChannelError(f"Telegram {answer.status_code}: {description}", retry=retry,
                           retry_after=float(retry_after) if retry_after else None)

    def send_message(self, chat_id: int, text: str) -> None:
        self._call("sendMessage", {"chat_id": chat_id, "text": text, "disable_web_page_preview": True})

    def get_updates(self, offset: int | None, timeout: int) -> list[dict]:
        """Messages sent to the bot since `offset` (those before it are confirmed and dropped by Telegram),
        waiting up to `timeout` seconds for one."""
        payload = {"timeout": timeout, "allowed_updates": ["message"]}
        if offset is not None:
            payload["offset"] = offset
        result = self._call("getUpdates", payload, timeout=timeout + TIMEOUT_SECONDS)
        return result if isinstance(result, list) else []

    def username(self) -> str | None:
        result = self._call("getMe", {})
        return result.get("username") if isinstance(result, dict) else None
