"""Side-by-side benchmarks on loopback (issue 7): our gateway against HAProxy's `jwt_verify` and a plain
nginx proxy, and our identity service against Better Auth 1.7.25. Run with `make bench`; see bench/README.md."""
