"""Identity service: Better Auth-compatible email/password sign-in, sessions, JWTs and JWKS."""
