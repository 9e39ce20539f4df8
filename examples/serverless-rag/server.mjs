// @ts-check
// Serves the handler on node:http: `TVS_ADMIN_KEY=... node server.mjs` (PORT, default 3000).
import { createServer } from "node:http";

import { handler } from "./handler.mjs";

const port = Number(process.env.PORT ?? 3000);
const server = createServer((req, res) => void handler(req, res));
server.listen(port, "127.0.0.1", () => {
  const address = server.address();
  console.log(`listening on http://127.0.0.1:${typeof address === "object" && address ? address.port : port}`);
});
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => server.close(() => process.exit(0)));
