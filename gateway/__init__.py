"""The edge gateway: a verifying reverse proxy (see README, "Architecture")."""
