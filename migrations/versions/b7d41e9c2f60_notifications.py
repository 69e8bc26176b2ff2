"""Notifications: what traders are told (written with the change they describe), each channel's delivery,
and each user's channels and opted-in kinds

Revision ID: b7d41e9c2f60
Revises: a1f0c2d3e4b5
Create Date: 2026-11-25 18:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b7d41e9c2f60'
down_revision = 'a1f0c2d3e4b5'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'notifications',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('strategy_id', sa.Integer(), nullable=True),
        sa.Column('kind', sa.String(24), nullable=False),
        sa.Column('data', sa.JSON(), nullable=False),
        sa.Column('dedupe', sa.String(80), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['strategy_id'], ['strategies.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('dedupe', name='uq_notifications_dedupe'),
    )
    op.create_index('ix_notifications_user_id', 'notifications', ['user_id'])
    op.create_index('ix_notifications_dispatched_at', 'notifications', ['dispatched_at'])
    op.create_table(
        'notification_deliveries',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('notification_id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('channel', sa.String(8), nullable=False),
        sa.Column('status', sa.String(8), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_try_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['notification_id'], ['notifications.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_notification_deliveries_notification_id', 'notification_deliveries', ['notification_id'])
    op.create_index('ix_notification_deliveries_user_id', 'notification_deliveries', ['user_id'])
    op.create_index('ix_notification_deliveries_next_try_at', 'notification_deliveries', ['next_try_at'])
    op.create_table(
        'notification_settings',
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('telegram_chat_id', sa.BigInteger(), nullable=True),
        sa.Column('telegram_linked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('telegram_kinds', sa.String(255), server_default='', nullable=False),
        sa.Column('email_kinds', sa.String(255), server_default='', nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('user_id'),
        sa.UniqueConstraint('telegram_chat_id', name='uq_notification_settings_telegram_chat_id'),
    )


def downgrade():
    op.drop_table('notification_settings')
    op.drop_index('ix_notification_deliveries_next_try_at', table_name='notification_deliveries')
    op.drop_index('ix_notification_deliveries_user_id', table_name='notification_deliveries')
    op.drop_index('ix_notification_deliveries_notification_id', table_name='notification_deliveries')
    op.drop_table('notification_deliveries')
    op.drop_index('ix_notifications_dispatched_at', table_name='notifications')
    op.drop_index('ix_notifications_user_id', table_name='notifications')
    op.drop_table('notifications')
