"""Broker secrets are encrypted with Fernet before they touch the database, and only decrypted where a
broker call needs them."""
from __future__ import annotations

from cryptography.fernet import Fernet
from flask import current_app


def _fernet() -> Fernet:
    return Fernet(current_app.config["ALGO_FERNET_KEY"].encode())


def encrypt(plaintext: str) -> bytes:
    return _fernet().encrypt(plaintext.encode())


def decrypt(token: bytes) -> str:
    return _fernet().decrypt(token).decode()
