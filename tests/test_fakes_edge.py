"""The network-edge fakes for notifications (tests.fake_telegram, tests.fake_smtp), driven by real clients:
`requests` against the fake Bot API over HTTP, the standard library's smtplib against the fake SMTP server."""
from __future__ import annotations

import smtplib
import threading
import time
from email.message import EmailMessage

import pytest
import requests

from tests.fake_smtp import FakeSMTP
from tests.fake_telegram import FakeTelegram

TOKEN = "123456:TEST-TOKEN"


@pytest.fixture
def tg():
    with FakeTelegram(token=TOKEN) as fake:
        yield fake


@pytest.fixture
def api(tg: FakeTelegram) -> str:
    return f"{tg.url}/bot{TOKEN}"


@pytest.fixture
def mail():
    with FakeSMTP() as fake:
        yield fake


# ------------------------------------------------------------------------------------------------ Telegram
def test_get_me_answers_the_bot_user(tg: FakeTelegram, api: str) -> None:
    assert tg.url.startswith("http://127.0.0.1:")
    r = requests.get(f"{api}/getMe", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert body["ok"] is True
    assert {k: body["result"][k] for k in ("id", "is_bot", "first_name", "username")} == \
        {"id": 123456, "is_bot": True, "first_name": "Algo", "username": "algo_test_bot"}
    assert tg.calls("getMe") == 1


def test_send_message_json_body_returns_a_message(tg: FakeTelegram, api: str) -> None:
    before = int(time.time())
    r = requests.post(f"{api}/sendMessage", timeout=5, json={
        "chat_id": 42, "text": "<b>INFY</b> bought 10 @ 1500", "parse_mode": "HTML",
        "disable_web_page_preview": True,
        "reply_markup": {"inline_keyboard": [[{"text": "Open", "url": "https://example.com/s/1"}]]}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True
    msg = body["result"]
    assert msg["message_id"] == 1
    assert before <= msg["date"] <= int(time.time())
    assert msg["chat"] == {"id": 42, "type": "private"}
    assert msg["from"] == {"id": 123456, "is_bot": True, "first_name": "Algo", "username": "algo_test_bot"}
    assert msg["text"] == "INFY bought 10 @ 1500"   # parse_mode markup is not part of the text
    assert msg["reply_markup"]["inline_keyboard"][0][0]["text"] == "Open"
    second = requests.post(f"{api}/sendMessage", json={"chat_id": 42, "text": "again"}, timeout=5).json()
    assert second["result"]["message_id"] == 2

    sent = tg.sent(42)
    assert [m["text"] for m in sent] == ["<b>INFY</b> bought 10 @ 1500", "again"]
    assert sent[0]["chat_id"] == 42 and sent[0]["parse_mode"] == "HTML"
    assert sent[0]["disable_web_page_preview"] is True
    assert sent[0]["reply_markup"] == {"inline_keyboard": [[{"text": "Open", "url": "https://example.com/s/1"}]]}
    assert isinstance(sent[0]["at"], float)
    assert tg.sent(7) == []
    assert tg.calls("sendMessage") == 2


def test_send_message_form_body_and_query_string(tg: FakeTelegram, api: str) -> None:
    r = requests.post(f"{api}/sendMessage", timeout=5, data={
        "chat_id": "42", "text": "Stop-loss hit: ₹-1,250", "disable_web_page_preview": "true",
        "reply_markup": '{"inline_keyboard":[[{"text":"Open","callback_data":"open:1"}]]}'})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["chat"]["id"] == 42
    r = requests.get(f"{api}/sendmessage", params={"chat_id": "-1001234", "text": "via GET"}, timeout=5)
    assert r.status_code == 200, r.text    # method names are case-insensitive, as on Telegram
    r = requests.post(f"{api}/sendMessage", timeout=5, data={"chat_id": "42", "text": "multipart"},
                      files={"unused": ("a.txt", b"x")})   # multipart/form-data, as when a client uploads
    assert r.status_code == 200, r.text
    assert tg.wait_for_sent(3, timeout=1)
    first, second, third = tg.sent()
    assert third["text"] == "multipart" and third["chat_id"] == 42
    assert first == {**first, "chat_id": 42, "text": "Stop-loss hit: ₹-1,250", "parse_mode": None,
                     "disable_web_page_preview": True}
    assert first["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "open:1"
    assert second["chat_id"] == -1001234 and second["text"] == "via GET"


def test_send_message_errors(tg: FakeTelegram, api: str) -> None:
    r = requests.post(f"{api}/sendMessage", json={"chat_id": 42}, timeout=5)
    assert (r.status_code, r.json()) == (400, {"ok": False, "error_code": 400,
                                               "description": "Bad Request: message text is empty"})
    r = requests.post(f"{api}/sendMessage", data={"chat_id": "42", "text": "  "}, timeout=5)
    assert r.json()["description"] == "Bad Request: message text is empty"
    r = requests.post(f"{api}/sendMessage", json={"text": "hi"}, timeout=5)
    assert (r.status_code, r.json()["description"]) == (400, "Bad Request: chat_id is empty")
    r = requests.post(f"{api}/sendMessage", json={"chat_id": 42, "text": "x" * 4097}, timeout=5)
    assert r.json()["description"] == "Bad Request: message is too long"
    tg.block_chat(42)
    r = requests.post(f"{api}/sendMessage", json={"chat_id": 42, "text": "hi"}, timeout=5)
    assert (r.status_code, r.json()) == (403, {"ok": False, "error_code": 403,
                                               "description": "Forbidden: bot was blocked by the user"})
    assert requests.post(f"{api}/sendMessage", json={"chat_id": 43, "text": "hi"}, timeout=5).ok
    assert [m["chat_id"] for m in tg.sent()] == [43]


def test_wrong_token_and_unknown_method(tg: FakeTelegram) -> None:
    r = requests.post(f"{tg.url}/bot123456:WRONG/sendMessage", json={"chat_id": 1, "text": "x"}, timeout=5)
    assert (r.status_code, r.json()) == (401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
    r = requests.get(f"{tg.url}/bot{TOKEN}/sendTelepathy", timeout=5)
    assert (r.status_code, r.json()) == (404, {"ok": False, "error_code": 404, "description": "Not Found"})
    assert requests.get(f"{tg.url}/", timeout=5).status_code == 404
    assert tg.sent() == [] and tg.calls("sendMessage") == 0


def test_get_updates_long_poll_returns_when_the_user_speaks(tg: FakeTelegram, api: str) -> None:
    box: dict = {}

    def poll() -> None:
        start = time.monotonic()
        box["body"] = requests.get(f"{api}/getUpdates", params={"timeout": 8}, timeout=15).json()
        box["took"] = time.monotonic() - start

    thread = threading.Thread(target=poll)
    thread.start()
    assert tg.wait_for_poll(timeout=5)
    said_at = time.monotonic()
    tg.user_says(555, "/status", user_id=777, first_name="Asha")
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert time.monotonic() - said_at < 2
    assert box["took"] < 7    # far short of the 8 s timeout
    body = box["body"]
    assert body["ok"] is True and len(body["result"]) == 1
    update = body["result"][0]
    assert set(update) == {"update_id", "message"}
    msg = update["message"]
    assert msg["chat"] == {"id": 555, "type": "private", "first_name": "Asha"}
    assert msg["from"] == {"id": 777, "is_bot": False, "first_name": "Asha"}
    assert msg["text"] == "/status" and isinstance(msg["message_id"], int) and isinstance(msg["date"], int)
    assert msg["entities"] == [{"offset": 0, "length": 7, "type": "bot_command"}]


def test_get_updates_times_out_empty_and_short_poll(tg: FakeTelegram, api: str) -> None:
    start = time.monotonic()
    assert requests.get(f"{api}/getUpdates", params={"timeout": 1}, timeout=5).json() == {"ok": True, "result": []}
    assert 0.9 <= time.monotonic() - start < 3
    assert requests.post(f"{api}/getUpdates", json={"timeout": 0}, timeout=5).json() == {"ok": True, "result": []}


def test_get_updates_offset_confirms_and_drops(tg: FakeTelegram, api: str) -> None:
    for text in ("/start", "/status", "/pause"):
        tg.user_says(42, text)
    first = requests.post(f"{api}/getUpdates", json={"limit": 2}, timeout=5).json()["result"]
    assert [u["message"]["text"] for u in first] == ["/start", "/status"]
    ids = [u["update_id"] for u in first]
    assert ids[1] == ids[0] + 1
    # Without an offset the same (unconfirmed) updates come again.
    again = requests.post(f"{api}/getUpdates", data={"timeout": "0"}, timeout=5).json()["result"]
    assert [u["update_id"] for u in again] == ids + [ids[1] + 1]
    # offset = last seen + 1 confirms everything before it.
    rest = requests.get(f"{api}/getUpdates", params={"offset": ids[1] + 1}, timeout=5).json()["result"]
    assert [u["message"]["text"] for u in rest] == ["/pause"]
    assert requests.get(f"{api}/getUpdates", params={"offset": rest[0]["update_id"] + 1}, timeout=5
                        ).json()["result"] == []
    assert requests.get(f"{api}/getUpdates", timeout=5).json()["result"] == []   # confirmed ones are gone
    assert tg.pending_updates() == []


def test_second_poller_ends_the_first_with_409(tg: FakeTelegram, api: str) -> None:
    box: dict = {}

    def poll() -> None:
        box["r"] = requests.get(f"{api}/getUpdates", params={"timeout": 8}, timeout=15)

    thread = threading.Thread(target=poll)
    thread.start()
    assert tg.wait_for_poll(timeout=5)
    assert requests.get(f"{api}/getUpdates", params={"timeout": 0}, timeout=5).json() == {"ok": True, "result": []}
    thread.join(timeout=5)
    assert box["r"].status_code == 409
    assert box["r"].json()["description"].startswith("Conflict: terminated by other getUpdates request")


def test_fail_next_500_then_recovers(tg: FakeTelegram, api: str) -> None:
    tg.fail_next("sendMessage", times=2)
    for _ in range(2):
        r = requests.post(f"{api}/sendMessage", json={"chat_id": 42, "text": "hi"}, timeout=5)
        assert (r.status_code, r.json()) == (500, {"ok": False, "error_code": 500,
                                                   "description": "Internal Server Error"})
    r = requests.post(f"{api}/sendMessage", json={"chat_id": 42, "text": "hi"}, timeout=5)
    assert r.status_code == 200 and r.json()["ok"] is True
    assert tg.calls("sendMessage") == 3
    assert len(tg.sent()) == 1


def test_fail_next_429_carries_retry_after(tg: FakeTelegram, api: str) -> None:
    tg.fail_next("sendMessage", 1, status=429)
    r = requests.post(f"{api}/sendMessage", json={"chat_id": 42, "text": "hi"}, timeout=5)
    assert (r.status_code, r.json()) == (429, {"ok": False, "error_code": 429,
                                               "description": "Too Many Requests: retry after 3",
                                               "parameters": {"retry_after": 3}})
    tg.fail_next("getUpdates", 1, status=429, retry_after=17)
    r = requests.get(f"{api}/getUpdates", timeout=5)
    assert r.status_code == 429 and r.json()["parameters"] == {"retry_after": 17}
    assert r.json()["description"] == "Too Many Requests: retry after 17"
    assert requests.post(f"{api}/sendMessage", json={"chat_id": 42, "text": "hi"}, timeout=5).ok


def test_set_my_commands_and_delete_webhook(tg: FakeTelegram, api: str) -> None:
    commands = [{"command": "status", "description": "Open positions"},
                {"command": "pause", "description": "Pause a strategy"}]
    assert requests.post(f"{api}/setMyCommands", json={"commands": commands}, timeout=5).json() == \
        {"ok": True, "result": True}
    assert tg.commands() == commands
    tg.user_says(42, "old")
    assert requests.post(f"{api}/deleteWebhook", data={"drop_pending_updates": "true"}, timeout=5).json() == \
        {"ok": True, "result": True}
    assert requests.get(f"{api}/getUpdates", timeout=5).json()["result"] == []


# ------------------------------------------------------------------------------------------------ SMTP
def _email(to: list[str], subject: str = "Order filled: INFY") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Algo <alerts@algo.test>"
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg.set_content("INFY bought 10 @ ₹1,500\n")
    return msg


def test_smtp_message_arrives(mail: FakeSMTP) -> None:
    with smtplib.SMTP(mail.host, mail.port, local_hostname="client.test", timeout=5) as smtp:
        refused = smtp.send_message(_email(["a@trader.test", "b@trader.test"]))
    assert refused == {}
    assert mail.wait_for(1, timeout=5)
    got = mail.messages[0]
    assert got["Subject"] == "Order filled: INFY"
    assert got["From"] == "Algo <alerts@algo.test>"
    assert got.get_content() == "INFY bought 10 @ ₹1,500\n"
    assert got.envelope_from == "alerts@algo.test"
    assert got.envelope_to == ["a@trader.test", "b@trader.test"]
    assert got.login is None


def test_smtp_data_failure_then_success(mail: FakeSMTP) -> None:
    mail.fail_next(1)
    with smtplib.SMTP(mail.host, mail.port, local_hostname="client.test", timeout=5) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as err:
            smtp.send_message(_email(["a@trader.test"]))
        assert err.value.smtp_code == 451
        assert err.value.smtp_error == b"4.3.0 Try again later"
        smtp.send_message(_email(["a@trader.test"], subject="retry"))   # same connection, after RSET
    assert mail.wait_for(1, timeout=5)
    assert [m["Subject"] for m in mail.messages] == ["retry"]


def test_smtp_rcpt_failure_then_success(mail: FakeSMTP) -> None:
    mail.fail_next(1, code=450, text="4.2.1 Mailbox busy", at="RCPT")
    with smtplib.SMTP(mail.host, mail.port, local_hostname="client.test", timeout=5) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as err:
            smtp.sendmail("alerts@algo.test", ["a@trader.test"], _email(["a@trader.test"]).as_bytes())
        assert err.value.recipients == {"a@trader.test": (450, b"4.2.1 Mailbox busy")}
    with smtplib.SMTP(mail.host, mail.port, local_hostname="client.test", timeout=5) as smtp:
        smtp.sendmail("alerts@algo.test", ["a@trader.test"], _email(["a@trader.test"]).as_bytes())
    assert mail.wait_for(1, timeout=5)
    assert mail.messages[0].envelope_to == ["a@trader.test"]
    assert not mail.wait_for(2, timeout=0.05)


def test_smtp_login_required() -> None:
    with FakeSMTP(username="algo", password="s3cret") as mail:
        with smtplib.SMTP(mail.host, mail.port, local_hostname="client.test", timeout=5) as smtp:
            with pytest.raises(smtplib.SMTPSenderRefused):
                smtp.send_message(_email(["a@trader.test"]))
        with smtplib.SMTP(mail.host, mail.port, local_hostname="client.test", timeout=5) as smtp:
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.login("algo", "wrong")
        with smtplib.SMTP(mail.host, mail.port, local_hostname="client.test", timeout=5) as smtp:
            smtp.login("algo", "s3cret")
            smtp.send_message(_email(["a@trader.test"]))
        assert mail.wait_for(1, timeout=5)
        assert mail.messages[0].login == "algo"
