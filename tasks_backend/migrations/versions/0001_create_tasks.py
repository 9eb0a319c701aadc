"""Create the tasks table and the indexes behind each list sort.

Revision ID: 0001
Revises:
Create Date: 2025-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Keep in step with tasks_backend.models.DUE_SORT_SQL (a migration is frozen history, so no import).
DUE_SORT_SQL = "coalesce(due_date, '9999-12-31')"


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.String(1000), nullable=True),
        sa.Column("completed", sa.Boolean(), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
    )
    # Keyset pagination within one user: (user_id[, completed], sort key, id) for every sort.
    for name, key in (("created", "created_at"), ("title", "title"), ("due", DUE_SORT_SQL)):
        expr = sa.text(key) if key == DUE_SORT_SQL else key
        op.create_index(f"ix_tasks_user_{name}", "tasks", ["user_id", expr, "id"])
        op.create_index(f"ix_tasks_user_completed_{name}", "tasks", ["user_id", "completed", expr, "id"])


def downgrade() -> None:
    op.drop_table("tasks")
