// Reads one run stream with the published client, to its end: node read_run_stream.mjs URL
// TOKEN LIVE (LIVE: sse, long-poll or false). Prints the JSON items it got, as one array.
import { stream } from "@durable-streams/client"

const [url, token, live] = process.argv.slice(2)
const res = await stream({
  url,
  headers: { Authorization: `Bearer ${token}` },
  offset: "-1",
  live: live === "false" ? false : live,
})
const items = []
for await (const item of res.jsonStream()) {
  items.push(item)
}
console.log(JSON.stringify(items))
