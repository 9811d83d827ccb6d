"""policy decisions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pool_id", sa.Integer(), nullable=False),
        sa.Column("policy_name", sa.String(length=63), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("current", sa.Integer(), nullable=False),
        sa.Column("desired", sa.Integer(), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("metric", sa.Float(), nullable=True),
        sa.Column("formula", sa.Text(), nullable=False),
        sa.Column("decision", sa.JSON(), nullable=False),
        sa.Column("record_key", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(["pool_id"], ["server_pools.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("record_key"),
    )
    with op.batch_alter_table("policy_decisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_policy_decisions_pool_id"), ["pool_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("policy_decisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_policy_decisions_pool_id"))
    op.drop_table("policy_decisions")
