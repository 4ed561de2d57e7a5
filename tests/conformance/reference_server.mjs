// The reference Durable Streams server (@durable-streams/server, pinned in package.json), with
// its defaults (in-memory, compression on, 30 s long-poll), on loopback and a free port:
// node reference_server.mjs. Prints "READY {"url": ...}" once it listens; on a "stop" line
// (or the end of its stdin) it stops and prints "RESULT {}" (tests/bench/bench_http.py).
// `node reference_server.mjs --data-dir DIR`: its file-backed store instead (each append
// written and fdatasync'ed to a segment file, metadata in LMDB), kept in DIR.
import { createInterface } from "node:readline"
import { DurableStreamTestServer } from "@durable-streams/server"

const at = process.argv.indexOf("--data-dir")
const dataDir = at > 0 ? process.argv[at + 1] : undefined
const server = new DurableStreamTestServer({ port: 0, host: "127.0.0.1", ...(dataDir ? { dataDir } : {}) })
await server.start()
console.log(`READY ${JSON.stringify({ url: server.url })}`)
let stopping = false
async function stop() {
  if (stopping) return
  stopping = true
  await server.stop()
  console.log("RESULT {}")
  process.exit(0)
}
const lines = createInterface({ input: process.stdin })
lines.on("line", (line) => { if (line.trim() === "stop") stop() })
lines.on("close", stop)
