"""order claims, filled quantity and algo id: an intent row is claimed by its lock's holder, the position
is what the broker filled, and a strategy may carry its own algo id

Revision ID: e7b3c1a90d42
Revises: d4a7e2b91c05
Create Date: 2026-11-25 10:20:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'e7b3c1a90d42'
down_revision = 'd4a7e2b91c05'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('order_logs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('filled_quantity', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('holder', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True))
    # Rows written before this revision: a COMPLETE order filled what it asked for.
    op.execute("UPDATE order_logs SET filled_quantity = quantity WHERE status = 'COMPLETE'")
    with op.batch_alter_table('strategies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('algo_id', sa.String(length=32), nullable=True))


def downgrade():
    with op.batch_alter_table('strategies', schema=None) as batch_op:
        batch_op.drop_column('algo_id')
    with op.batch_alter_table('order_logs', schema=None) as batch_op:
        batch_op.drop_column('claimed_at')
        batch_op.drop_column('holder')
        batch_op.drop_column('filled_quantity')
