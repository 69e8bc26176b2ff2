"""Strategies traders run: direction, stop-loss and target in price / % / points, trailing and breakeven,
LIMIT→MARKET entries, recurring weekdays; each run's outcome and levels; per-user risk limits and the
day's halt

Revision ID: c8e41f7a2d93
Revises: b6f2d8c4e1a9
Create Date: 2026-11-25 15:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c8e41f7a2d93'
down_revision = 'b6f2d8c4e1a9'
branch_labels = None
depends_on = None

MONEY = sa.Numeric(14, 2)


def upgrade():
    with op.batch_alter_table('strategies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('direction', sa.String(5), server_default='long', nullable=False))
        batch_op.add_column(sa.Column('stop_loss_type', sa.String(8), server_default='price', nullable=False))
        batch_op.add_column(sa.Column('target_type', sa.String(8), nullable=True))
        batch_op.add_column(sa.Column('target', MONEY, nullable=True))
        batch_op.add_column(sa.Column('trail_unit', sa.String(8), nullable=True))
        batch_op.add_column(sa.Column('trail_every', MONEY, nullable=True))
        batch_op.add_column(sa.Column('trail_by', MONEY, nullable=True))
        batch_op.add_column(sa.Column('breakeven_at', MONEY, nullable=True))
        batch_op.add_column(sa.Column('order_type', sa.String(8), server_default='MARKET', nullable=False))
        batch_op.add_column(sa.Column('limit_buffer_pct', sa.Numeric(6, 3), nullable=True))
        batch_op.add_column(sa.Column('limit_wait_seconds', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('weekdays', sa.String(7), nullable=True))
        batch_op.add_column(sa.Column('deployed', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('stop_price', MONEY, nullable=True))
        batch_op.add_column(sa.Column('target_price', MONEY, nullable=True))
        batch_op.add_column(sa.Column('stop_reason', sa.String(255), nullable=True))
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status', sa.String(16), nullable=True))
        batch_op.add_column(sa.Column('reason', sa.String(255), nullable=True))
        batch_op.add_column(sa.Column('direction', sa.String(5), server_default='long', nullable=False))
        batch_op.add_column(sa.Column('stop_price', MONEY, nullable=True))
        batch_op.add_column(sa.Column('target_price', MONEY, nullable=True))
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('daily_loss_limit', MONEY, nullable=True))
        batch_op.add_column(sa.Column('max_open_positions', sa.Integer(), nullable=True))
    op.create_table(
        'day_halts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('trading_day', sa.String(10), nullable=False),
        sa.Column('reason', sa.String(255), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('user_id', 'trading_day', name='uq_day_halts_user_day'),
    )
    with op.batch_alter_table('day_halts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_day_halts_user_id'), ['user_id'], unique=False)


def downgrade():
    with op.batch_alter_table('day_halts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_day_halts_user_id'))
    op.drop_table('day_halts')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('max_open_positions')
        batch_op.drop_column('daily_loss_limit')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        for column in ('target_price', 'stop_price', 'direction', 'reason', 'status'):
            batch_op.drop_column(column)
    with op.batch_alter_table('strategies', schema=None) as batch_op:
        for column in ('stop_reason', 'target_price', 'stop_price', 'deployed', 'weekdays', 'limit_wait_seconds',
                       'limit_buffer_pct', 'order_type', 'breakeven_at', 'trail_by', 'trail_every', 'trail_unit',
                       'target', 'target_type', 'stop_loss_type', 'direction'):
            batch_op.drop_column(column)
