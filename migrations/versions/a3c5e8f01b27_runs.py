"""runs: each START is a run with its own id, carried by every event id and order tag of that run

Revision ID: a3c5e8f01b27
Revises: e7b3c1a90d42
Create Date: 2026-11-25 12:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'a3c5e8f01b27'
down_revision = 'e7b3c1a90d42'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'runs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('strategy_id', sa.Integer(), nullable=False),
        sa.Column('run_date', sa.String(length=10), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['strategy_id'], ['strategies.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runs_strategy_id'), ['strategy_id'], unique=False)
    with op.batch_alter_table('strategies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('run_id', sa.Integer(), nullable=True))
    # A strategy started before this revision gets a run for its current day. Its events in flight, if any,
    # still carry the date (the old id form): deploy outside market hours.
    op.execute("INSERT INTO runs (strategy_id, run_date, started_at) "
               "SELECT id, run_date, updated_at FROM strategies WHERE run_date IS NOT NULL")
    op.execute("UPDATE strategies SET run_id = (SELECT max(runs.id) FROM runs WHERE runs.strategy_id = strategies.id)")


def downgrade():
    with op.batch_alter_table('strategies', schema=None) as batch_op:
        batch_op.drop_column('run_id')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_strategy_id'))
    op.drop_table('runs')
