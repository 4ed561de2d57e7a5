// The package's build: dist/runwire.js (the client, with its two dependencies bundled in, so
// the engine can serve it at /v1/js/runwire.js to a page with no build step), dist/react.js
// (the hooks; `react` stays a bare import, the client is imported from ./runwire.js) and the
// types (tsc). tests/test_js_build.py runs it and checks the committed dist/ is what it makes.
import { execFileSync } from "node:child_process";
import { rmSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(here, process.argv[2] ?? "dist");
const version = JSON.parse(readFileSync(join(here, "package.json"), "utf8")).version;
const banner = { js: `// @runwire/client ${version} (built by sdk/js/build.mjs; do not edit)` };
const common = {
  bundle: true, format: "esm", platform: "browser", target: "es2022", legalComments: "inline",
  logLevel: "warning", banner, charset: "utf8", absWorkingDir: here,
};

rmSync(out, { recursive: true, force: true });
await build({ ...common, entryPoints: [join(here, "src/index.ts")], outfile: join(out, "runwire.js") });
await build({
  ...common,
  entryPoints: [join(here, "src/react.ts")],
  outfile: join(out, "react.js"),
  external: ["react"],
  plugins: [{
    name: "client-next-door",
    setup(b) {
      b.onResolve({ filter: /^\.\/index$/ }, () => ({ path: "./runwire.js", external: true }));
    },
  }],
});
execFileSync(process.execPath, [join(here, "node_modules/typescript/bin/tsc"), "-p", here,
                                "--outDir", out], { stdio: "inherit" });
