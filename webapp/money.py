"""Money as Indian traders read it, in one place: ₹1,23,456.50 (lakh grouping), and −₹62.00 for a loss
with a real minus sign, for pages, messages and audit text alike."""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

PAISE = Decimal("0.01")
MINUS = "\u2212"  # the typographic minus: −₹62.00


def inr(value: Decimal | str | int | float | None) -> str:
    """Rupees the Indian way; '—' for nothing."""
    if value is None or value == "":
        return "—"
    amount = Decimal(str(value)).quantize(PAISE, rounding=ROUND_HALF_UP)
    whole, _, paise = f"{abs(amount):.2f}".partition(".")
    head, groups = whole[:-3], [whole[-3:]]
    while head:
        groups.insert(0, head[-2:])
        head = head[:-2]
    return f"{MINUS if amount < 0 else ''}₹{','.join(groups)}.{paise}"


def percent(value: Decimal | str | None) -> str:
    if value is None or value == "":
        return "—"
    amount = Decimal(str(value)).quantize(PAISE, rounding=ROUND_HALF_UP)
    return f"{MINUS if amount < 0 else ''}{abs(amount)}%"
