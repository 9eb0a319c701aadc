"""Initial identity schema: users, sessions, signing keys, revocation feed.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identity_users",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("email_verified", sa.Boolean, nullable=False),
        sa.Column("image", sa.Text, nullable=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_identity_users_email", "identity_users", ["email"], unique=True)
    op.create_table(
        "identity_sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("identity_users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("ip_address", sa.Text, nullable=False),
        sa.Column("user_agent", sa.Text, nullable=False),
        sa.Column("remember", sa.Boolean, nullable=False),
    )
    op.create_index("ix_identity_sessions_token_hash", "identity_sessions", ["token_hash"], unique=True)
    op.create_index("ix_identity_sessions_user_id", "identity_sessions", ["user_id"])
    op.create_table(
        "identity_signing_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("public_jwk", sa.Text, nullable=False),
        sa.Column("private_key", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("signs_from", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_identity_signing_keys_generation", "identity_signing_keys", ["generation"], unique=True)
    op.create_table(
        "identity_revocations",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(32), nullable=False),
        sa.Column("revoked_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_identity_revocations_expires_at", "identity_revocations", ["expires_at"])
    op.create_index("ix_identity_revocations_revoked_at", "identity_revocations", ["revoked_at"])


def downgrade() -> None:
    op.drop_table("identity_revocations")
    op.drop_table("identity_signing_keys")
    op.drop_table("identity_sessions")
    op.drop_table("identity_users")
