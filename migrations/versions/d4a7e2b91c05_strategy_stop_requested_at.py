"""strategy stop requested at: a STOP survives a Redis wipe

Revision ID: d4a7e2b91c05
Revises: c0d09629cfff
Create Date: 2026-11-25 04:40:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'd4a7e2b91c05'
down_revision = 'c0d09629cfff'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('strategies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stop_requested_at', sa.DateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table('strategies', schema=None) as batch_op:
        batch_op.drop_column('stop_requested_at')
