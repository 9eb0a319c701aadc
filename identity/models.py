"""The identity schema (SQLAlchemy Core tables; the migrations in ``migrations/versions`` create them).

Times are integer milliseconds since the Unix epoch: identical on SQLite and PostgreSQL, cheap to compare in
SQL, and exactly the precision of the JavaScript dates Better Auth sends (``2026-11-26T12:57:23.311Z``).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, ForeignKey, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

users = Table(
    "identity_users",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", Text, nullable=False),
    # Stored lower-cased, so the unique index makes email unique case-insensitively (reference 2.2).
    Column("email", String(320), nullable=False),
    Column("email_verified", Boolean, nullable=False, default=False),
    Column("image", Text, nullable=True),
    Column("password_hash", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_identity_users_email", "email", unique=True),
)

sessions = Table(
    "identity_sessions",
    metadata,
    Column("id", String(32), primary_key=True),
    # SHA-256 (hex) of the session token: a database leak does not leak live sessions (issue 3, Security).
    Column("token_hash", String(64), nullable=False),
    Column("user_id", String(32), ForeignKey("identity_users.id", ondelete="CASCADE"), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("ip_address", Text, nullable=False, default=""),
    Column("user_agent", Text, nullable=False, default=""),
    # False for rememberMe:false sessions, which never slide (reference 2.11).
    Column("remember", Boolean, nullable=False, default=True),
    Index("ix_identity_sessions_token_hash", "token_hash", unique=True),
    Index("ix_identity_sessions_user_id", "user_id"),
)

signing_keys = Table(
    "identity_signing_keys",
    metadata,
    Column("id", String(32), primary_key=True),  # the JWK "kid"
    # Unique: two replicas creating the first key (or two rotations) race on this and exactly one wins.
    Column("generation", Integer, nullable=False),
    Column("alg", String(16), nullable=False),
    Column("public_jwk", Text, nullable=False),
    # "v1:" + base64(nonce || AES-256-GCM(PKCS#8 DER)), key from HKDF(IDENTITY_SECRET), AAD = kid.
    Column("private_key", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # Published in the JWKS from creation; signs only from this time on (rotate-key's publish delay).
    Column("signs_from", BigInteger, nullable=False),
    Index("ix_identity_signing_keys_generation", "generation", unique=True),
)

revocations = Table(
    "identity_revocations",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(32), nullable=False),
    Column("revoked_at", BigInteger, nullable=False),
    # After this no JWT carrying the session id can still be valid: the entry is dropped from the feed.
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_identity_revocations_expires_at", "expires_at"),
    Index("ix_identity_revocations_revoked_at", "revoked_at"),
)
