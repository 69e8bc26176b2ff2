"""broker_accounts.proxy_url_enc: the account's outbound proxy for its Kite REST calls (encrypted like the other
secrets: the URL may carry a user and password), so its orders leave from the IP registered to its API key

Revision ID: c3e9a5d7f812
Revises: b7d41e9c2f60
Create Date: 2026-11-25 18:15:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c3e9a5d7f812'
down_revision = 'b7d41e9c2f60'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('broker_accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('proxy_url_enc', sa.LargeBinary(), nullable=True))


def downgrade():
    with op.batch_alter_table('broker_accounts', schema=None) as batch_op:
        batch_op.drop_column('proxy_url_enc')
