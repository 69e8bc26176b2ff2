"""Email through the operator's SMTP relay (STARTTLS and login when configured)."""
from __future__ import annotations

import smtplib
import socket
from email.message import EmailMessage

from webapp.channels import ChannelError

TIMEOUT_SECONDS = 10


def send(config: dict, to: str, subject: str, body: str) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = config["SMTP_FROM"], to, subject
    message.set_content(body)
    try:
        with smtplib.SMTP(config["SMTP_HOST"], config["SMTP_PORT"], timeout=TIMEOUT_SECONDS) as smtp:
            if config["SMTP_STARTTLS"]:
                smtp.starttls()
            if config["SMTP_USER"]:
                smtp.login(config["SMTP_USER"], config["SMTP_PASSWORD"])
            smtp.send_message(message)
    except smtplib.SMTPResponseException as exc:  # 4xx: try later; 5xx: refused for good
        raise ChannelError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", retry=400 <= exc.smtp_code < 500) from exc
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        raise ChannelError(f"SMTP refused {to}: {codes}", retry=all(400 <= c < 500 for c in codes)) from exc
    except (smtplib.SMTPException, OSError, socket.timeout) as exc:
        raise ChannelError(f"SMTP unreachable: {exc.__class__.__name__}: {exc}") from exc
