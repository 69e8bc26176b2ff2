"""The audit log as CSV for an admin (GET /admin/audit.csv): every event, oldest first, streamed in batches,
optionally between two IST dates. Cells are made formula-safe as every CSV export here is (history._text).
Audit events are never deleted by the app: a deleted user's events stay, their user ids set to NULL."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta, timezone

from sqlalchemy import select

from webapp.extensions import db
from webapp.market_calendar import IST
from webapp.models import AuditEvent, User
from webapp.services.errors import ValidationFailed
from webapp.services.history import _text

COLUMNS = ("id", "time_utc", "time_ist", "actor_user_id", "actor_email", "subject_user_id", "subject_email",
           "strategy_id", "action", "severity", "detail")
BATCH = 500


def ist_day(raw: str | None, field: str) -> date | None:
    """An IST date typed as YYYY-MM-DD, or None when left empty."""
    if not raw:
        return None
    try:
        return date.fromisoformat(raw.strip())
    except ValueError:
        raise ValidationFailed({field: "A date as YYYY-MM-DD (IST)."}) from None


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time.min, IST).astimezone(timezone.utc)


def rows(first: date | None, last: date | None) -> Iterator[str]:
    """The CSV text, a batch of rows at a time: events from the start of `first` to the end of `last` (IST)."""
    query = select(AuditEvent).order_by(AuditEvent.id)
    if first is not None:
        query = query.where(AuditEvent.created_at >= _start_of(first))
    if last is not None:
        query = query.where(AuditEvent.created_at < _start_of(last + timedelta(days=1)))
    emails = dict(db.session.execute(select(User.id, User.email)).all())
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for n, event in enumerate(db.session.scalars(query.execution_options(yield_per=BATCH)), 1):
        at = event.created_at.astimezone(timezone.utc)
        writer.writerow([
            event.id, at.isoformat(), at.astimezone(IST).isoformat(),
            "" if event.actor_user_id is None else event.actor_user_id, _text(emails.get(event.actor_user_id)),
            "" if event.subject_user_id is None else event.subject_user_id, _text(emails.get(event.subject_user_id)),
            "" if event.strategy_id is None else event.strategy_id, _text(event.action), _text(event.severity),
            _text(json.dumps(event.detail, sort_keys=True, ensure_ascii=False, default=str)
                  if event.detail is not None else ""),
        ])
        if n % BATCH == 0:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    yield out.getvalue()


def filename(first: date | None, last: date | None) -> str:
    return "audit" + (f"-from-{first}" if first else "") + (f"-to-{last}" if last else "") + ".csv"
