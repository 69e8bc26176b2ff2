from __future__ import annotations


class ValidationFailed(Exception):
    """Per-field messages, shown beside each form field and returned as `fields` in JSON."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields
