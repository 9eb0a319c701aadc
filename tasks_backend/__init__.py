"""A per-user tasks API that trusts identity only through the gateway proof."""
