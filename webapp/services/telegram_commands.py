"""What the bot answers. Only a chat linked to a user (webapp/services/notifications.py) commands anything,
and only that user's strategies; every action goes through the same services as the web (lifecycle,
status, risk) and is audited. /exitall asks for a code before it squares anything off."""
from __future__ import annotations

import json
import logging
import re
import secrets

import redis
from sqlalchemy import select

from webapp import clock, keys
from webapp.extensions import db
from webapp.models import AuditEvent, Strategy, User
from webapp.money import inr
from webapp.services import lifecycle, notifications, risk
from webapp.services import status as status_service
from webapp.services.history import describe
from webapp.state_machine import is_running

log = logging.getLogger("telegram")

CONFIRM_SECONDS = 60
HELP = ("/status: your strategies now\n/pnl: today's P&L\n/stop <name or #id>: stop one strategy (squares off "
        "its position)\n/exitall: stop every running strategy and square off (asks to confirm)\n/help: this list")
NOT_LINKED = ("This chat is not linked to an account. On the Notifications page press “Link Telegram”, then "
              "send the code here.")
_CODE = re.compile(f"^[{notifications.LINK_ALPHABET}]{{{notifications.LINK_LENGTH}}}$")


def handle(conn: redis.Redis, chat_id: int, text: str) -> str:
    """The reply to one message from `chat_id`."""
    words = text.strip().split()
    if not words:
        return HELP
    command = words[0].split("@", 1)[0].lower()  # "/status@algo_bot" in a group
    argument = " ".join(words[1:])
    code = argument if command == "/start" else words[0]
    user = notifications.user_for_chat(chat_id)
    if _CODE.match(code.upper()) and (command == "/start" or user is None):
        try:
            linked = notifications.link_chat(conn, code, chat_id)
        except notifications.LinkRefused as exc:
            return str(exc)
        return f"Linked to {linked.email}. You will get the notifications you chose here.\n\n{HELP}"
    if user is None:
        return NOT_LINKED
    if command in ("/help", "/start"):
        return HELP
    if command == "/status":
        return _status(user)
    if command == "/pnl":
        return _pnl(user)
    if command == "/stop":
        return _stop(user, argument)
    if command == "/exitall":
        return _ask_exit_all(conn, chat_id, user)
    if command == "/confirm":
        return _exit_all(conn, chat_id, user, argument)
    return f"I don't know {command}.\n\n{HELP}"


def _strategies(user: User) -> list[Strategy]:
    return list(db.session.scalars(select(Strategy).where(Strategy.user_id == user.id).order_by(Strategy.name)))


def _status(user: User) -> str:
    lines = []
    for strategy in _strategies(user):
        state = status_service.status_for(strategy)
        line = f"#{strategy.id} {strategy.name} ({strategy.symbol}): {describe(state['status'])}"
        if state.get("position"):
            line += f", {state['position']} held"
        if state.get("pnl") is not None:
            line += f", P&L {inr(state['pnl'])}"
        lines.append(line)
    return "\n".join(lines) or "You have no strategies."


def _pnl(user: User) -> str:
    day = risk.trading_day(clock.now())
    pnl = risk.day_pnl(user, day, without_redis=True)
    total = pnl.realised + pnl.unrealised
    return (f"Today ({day}): {inr(total)} — realised {inr(pnl.realised)}, unrealised {inr(pnl.unrealised)}; "
            f"{pnl.open_positions} open position{'s' if pnl.open_positions != 1 else ''}.")


def _find(user: User, which: str) -> Strategy | None:
    which = which.strip().lstrip("#")
    mine = _strategies(user)
    if which.isdigit():
        return next((s for s in mine if s.id == int(which)), None)
    named = [s for s in mine if s.name.lower() == which.lower()]
    return named[0] if len(named) == 1 else None


def _audit(user: User, command: str, detail: dict, strategy: Strategy | None = None) -> None:
    db.session.add(AuditEvent(actor_user_id=user.id, subject_user_id=user.id, action="telegram_command",
                              strategy_id=strategy.id if strategy else None, detail={"command": command, **detail}))
    db.session.commit()


def _stop(user: User, which: str) -> str:
    if not which:
        return "Which one? /stop <name or #id> (see /status)."
    strategy = _find(user, which)
    if strategy is None:
        return f"No single strategy of yours is called “{which}”: use its #id from /status."
    try:
        said = lifecycle.request_stop(strategy)
    except (lifecycle.NotRunning, lifecycle.EngineUnavailable) as exc:
        return f"{strategy.name}: {exc}"
    _audit(user, "/stop", {"said": said}, strategy)
    return f"{strategy.name}: {said}"


def _active(user: User) -> list[Strategy]:
    """What /exitall stops: every running strategy, and every deployed one (so no day begins later)."""
    return [s for s in _strategies(user) if is_running(s.status) or s.deployed]


def _ask_exit_all(conn: redis.Redis, chat_id: int, user: User) -> str:
    running = [s for s in _active(user) if is_running(s.status)]
    deployed = [s for s in _active(user) if not is_running(s.status)]
    if not running and not deployed:
        return "Nothing of yours is running or deployed."
    code = f"{secrets.randbelow(10000):04d}"
    conn.set(keys.telegram_confirm(chat_id), json.dumps({"command": "/exitall", "code": code, "user": user.id}),
             ex=CONFIRM_SECONDS)
    held = sum(1 for s in running if s.position)
    undeploys = f" and undeploys {len(deployed)} more (no new day begins)" if deployed else ""
    return (f"This stops {len(running)} running strateg{'y' if len(running) == 1 else 'ies'}, squares off "
            f"{held} position{'s' if held != 1 else ''} at market{undeploys}. To go ahead, send /confirm {code} "
            f"within {CONFIRM_SECONDS} s.")


def _exit_all(conn: redis.Redis, chat_id: int, user: User, code: str) -> str:
    pending = conn.getdel(keys.telegram_confirm(chat_id))
    asked = json.loads(pending) if pending else None
    if not asked or asked.get("user") != user.id:
        return "Nothing is waiting for a confirmation (codes last 60 s): send /exitall again."
    if code.strip() != asked["code"]:
        return "That is not the code: nothing was done. Send /exitall again."
    said = []
    for strategy in _active(user):
        try:
            said.append(f"{strategy.name}: {lifecycle.request_stop(strategy)}")
        except (lifecycle.NotRunning, lifecycle.EngineUnavailable) as exc:
            said.append(f"{strategy.name}: {exc}")
    _audit(user, "/exitall", {"said": said})
    log.warning("exit all from telegram", extra={"event": "telegram_exit_all", "user_id": user.id,
                                                 "strategies": len(said)})
    return "\n".join(said) or "Nothing of yours was running."
