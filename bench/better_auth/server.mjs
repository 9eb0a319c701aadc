// Better Auth 1.7.25 as the identity reference for `make bench` (issue 7), configured as in
// shared/reference/better-auth-wire.md: email/password + jwt + bearer plugins, file SQLite in WAL mode.
//
//   node server.mjs PORT DB_FILE        (env: BA_SECRET, BA_JWT_ALG=EdDSA|ES256|RS256)
//
// Binds 127.0.0.1 only. Runs its own schema migrations at start, then prints "READY <port>".
import http from "node:http";
import Database from "better-sqlite3";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import { bearer, jwt } from "better-auth/plugins";

const port = Number(process.argv[2] ?? 3300);
const file = process.argv[3] ?? "better-auth.db";
const secret = process.env.BA_SECRET;
if (!secret || secret.length < 32) {
  console.error("BA_SECRET (at least 32 characters) is required");
  process.exit(2);
}
const db = new Database(file);
db.pragma("journal_mode = WAL");

const baseURL = `http://127.0.0.1:${port}`;
const options = {
  baseURL,
  secret,
  database: db,
  emailAndPassword: { enabled: true },
  plugins: [jwt({ jwks: { keyPairConfig: { alg: process.env.BA_JWT_ALG ?? "EdDSA" } } }), bearer()],
  telemetry: { enabled: false },
};
const auth = betterAuth(options);
const { runMigrations } = await getMigrations(auth.options);
await runMigrations();

const handler = toNodeHandler(auth);
const server = http.createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" }).end("ok");
    return;
  }
  handler(req, res);
});
server.keepAliveTimeout = 65_000;
server.listen(port, "127.0.0.1", () => console.log(`READY ${port}`));
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
