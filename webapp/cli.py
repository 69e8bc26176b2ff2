"""`flask create-admin EMAIL`: the only way to make an admin, so the role never comes from a web form."""
from __future__ import annotations

import getpass

import click
from flask import Flask
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import AuditEvent, User
from webapp.services import accounts
from webapp.services.errors import ValidationFailed


@click.command("create-admin")
@click.argument("email")
@click.option("--password", envvar="ADMIN_PASSWORD", help="Asked for when not given (or set ADMIN_PASSWORD).")
def create_admin(email: str, password: str | None) -> None:
    """Create an admin account, or make an existing account an admin."""
    user = db.session.scalar(select(User).where(User.email == accounts.normalise_email(email)))
    if user is None:
        password = password or getpass.getpass("Password for the new admin: ")
        try:
            user = accounts.register(email, password)
        except ValidationFailed as exc:
            raise click.ClickException(str(exc)) from exc
    user.is_admin = True
    db.session.add(AuditEvent(subject_user_id=user.id, action="admin_granted", detail={"via": "cli"}))
    db.session.commit()
    click.echo(f"{user.email} is an admin.")


def init_app(app: Flask) -> None:
    app.cli.add_command(create_admin)
