"""balancer statistics roll-ups

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "balancer_stats_rollups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("load_balancer_id", sa.Integer(), nullable=False),
        sa.Column("collected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("driver", sa.String(length=16), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("responses_2xx", sa.Integer(), nullable=False),
        sa.Column("responses_3xx", sa.Integer(), nullable=False),
        sa.Column("responses_4xx", sa.Integer(), nullable=False),
        sa.Column("responses_5xx", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("success_rate", sa.Float(), nullable=True),
        sa.Column("servers", sa.JSON(), nullable=False),
        sa.Column("cumulative", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["load_balancer_id"], ["load_balancers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("balancer_stats_rollups", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_balancer_stats_rollups_load_balancer_id"), ["load_balancer_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_balancer_stats_rollups_collected_at"), ["collected_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("balancer_stats_rollups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_balancer_stats_rollups_collected_at"))
        batch_op.drop_index(batch_op.f("ix_balancer_stats_rollups_load_balancer_id"))
    op.drop_table("balancer_stats_rollups")
