"""broker_accounts.market_feed: the Kite account an admin picks for the market-data ticker (the feed's session
comes from the database, renewed by that user's daily login; KITE_FEED_* stay only as an override)

Revision ID: b6f2d8c4e1a9
Revises: a3c5e8f01b27
Create Date: 2026-11-26 09:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b6f2d8c4e1a9'
down_revision = 'a3c5e8f01b27'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('broker_accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('market_feed', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade():
    with op.batch_alter_table('broker_accounts', schema=None) as batch_op:
        batch_op.drop_column('market_feed')
