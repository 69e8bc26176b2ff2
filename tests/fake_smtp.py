"""A local SMTP server (aiosmtpd) for tests that fake only the network edge: a real SMTP client (smtplib)
talks the real protocol to it.

    import smtplib
    from email.message import EmailMessage
    from tests.fake_smtp import FakeSMTP

    with FakeSMTP() as mail:
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "algo@example.com", "trader@example.com", "Order filled"
        msg.set_content("INFY bought 10 at 1500")
        with smtplib.SMTP(mail.host, mail.port) as smtp:
            smtp.send_message(msg)
        assert mail.wait_for(1)
        got = mail.messages[0]          # an email.message.EmailMessage (policy email.policy.default)
        got["Subject"], got.get_content(), got.envelope_from, got.envelope_to

fail_next(times, code=451, text="4.3.0 Try again later", at="DATA") makes the next `times` DATA commands
(at="RCPT": RCPT TO commands) answer that reply instead of accepting: smtplib raises SMTPDataError(code, text)
or, when every recipient is refused, SMTPRecipientsRefused({rcpt: (code, text)}).

FakeSMTP(username="u", password="p") requires AUTH (PLAIN or LOGIN) before MAIL, over the plain connection
(no STARTTLS here: a client must be allowed to log in without TLS to use it).
"""
from __future__ import annotations

import email
import email.policy
import socket
import threading
import time
import warnings
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

__all__ = ["FakeSMTP"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Handler:
    """aiosmtpd handler: records each accepted DATA, or answers the queued failure."""

    def __init__(self, fake: "FakeSMTP") -> None:
        self.fake = fake

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list) -> str:
        failure = self.fake._take_failure("RCPT")
        if failure:
            return failure
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        failure = self.fake._take_failure("DATA")
        if failure:
            return failure
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        # The wire's CRLF line ends become "\n", as a mailbox stores them; .raw keeps the bytes as sent.
        message = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
        message.envelope_from = envelope.mail_from            # type: ignore[attr-defined]
        message.envelope_to = list(envelope.rcpt_tos)         # type: ignore[attr-defined]
        message.raw = raw                                     # type: ignore[attr-defined]
        message.login = session.auth_data if session.authenticated else None  # type: ignore[attr-defined]
        self.fake._record(message)
        return "250 2.0.0 OK: queued"


class _Controller(Controller):
    def factory(self):  # type: ignore[no-untyped-def]
        with warnings.catch_warnings():  # "Requiring AUTH while not requiring TLS": deliberate, it is a fake
            warnings.simplefilter("ignore", UserWarning)
            return super().factory()


class FakeSMTP:
    """An SMTP server on 127.0.0.1 (a free port), run by aiosmtpd's Controller in a daemon thread.

    FakeSMTP(*, username=None, password=None)
    Attributes: .host ("127.0.0.1"), .port, .messages (list of EmailMessage, each with .envelope_from,
    .envelope_to (list), .raw (bytes), .login (the AUTH user name, or None)).
    Methods: wait_for(count, timeout=10) -> bool; fail_next(times=1, code=451, text=..., at="DATA"); reset()."""

    host = "127.0.0.1"

    def __init__(self, *, username: str | None = None, password: str | None = None) -> None:
        self.port = 0
        self.messages: list[EmailMessage] = []
        self._cond = threading.Condition()
        self._failures: dict[str, list] = {}   # "DATA"/"RCPT" -> [times_left, reply]
        self._credentials = (username, password) if username is not None else None
        self._controller: Controller | None = None

    def start(self) -> "FakeSMTP":
        kwargs: dict[str, Any] = {"server_hostname": "fake-smtp.test"}  # not socket.getfqdn(): no DNS lookup
        if self._credentials:
            kwargs.update(authenticator=self._authenticate, auth_required=True, auth_require_tls=False)
        last: Exception | None = None
        for _ in range(5):                      # a free port can be taken between choosing and binding
            port = _free_port()
            controller = _Controller(_Handler(self), hostname=self.host, port=port, ready_timeout=5, **kwargs)
            try:
                controller.start()
            except Exception as err:  # noqa: BLE001 - retry on another port
                last = err
                continue
            self._controller, self.port = controller, port
            return self
        raise RuntimeError(f"FakeSMTP could not start: {last!r}")

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> "FakeSMTP":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------- control API
    def wait_for(self, count: int, timeout: float = 10) -> bool:
        """Wait until at least `count` messages were accepted; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def fail_next(self, times: int = 1, code: int = 451, text: str = "4.3.0 Try again later", *,
                  at: str = "DATA") -> None:
        """The next `times` DATA (at="RCPT": RCPT TO) commands answer f"{code} {text}" instead of accepting."""
        stage = at.upper()
        if stage not in ("DATA", "RCPT"):
            raise ValueError("at must be 'DATA' or 'RCPT'")
        with self._cond:
            self._failures[stage] = [times, f"{code} {text}"]

    def reset(self) -> None:
        with self._cond:
            self.messages.clear()
            self._failures.clear()

    # ----------------------------------------------------------------------------------------- internals
    def _take_failure(self, stage: str) -> str | None:
        with self._cond:
            failure = self._failures.get(stage)
            if failure and failure[0] > 0:
                failure[0] -= 1
                return failure[1]
            return None

    def _record(self, message: EmailMessage) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword) and self._credentials is not None:
            user = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
            if (user, password) == self._credentials:
                return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)
