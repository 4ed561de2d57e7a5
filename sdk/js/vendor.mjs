// React and ReactDOM from node_modules as browser ES modules, for pages with no build step
// that map the bare specifiers with an import map (the browser tests, examples/react_chat):
//   node vendor.mjs OUTDIR  ->  OUTDIR/react.js, OUTDIR/react-dom-client.js
// React's npm packages are CommonJS; react.js bundles React and ReactDOM's client together
// (one copy of React) and re-exports their names; react-dom-client.js re-exports createRoot
// from "react" (that bundle, through the import map).
// Not part of the published package (package.json "files" has dist/ only).
import { mkdirSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? join(here, "vendor"));
const require = createRequire(join(here, "package.json"));
const valid = (name) => /^[A-Za-z_$][\w$]*$/.test(name) && name !== "default";
const reactNames = Object.keys(require("react")).filter(valid);
const domNames = Object.keys(require("react-dom/client")).filter((n) => valid(n) && !reactNames.includes(n));
const production = process.env.NODE_ENV !== "development";
mkdirSync(out, { recursive: true });
await build({
  stdin: {
    contents: [
      'import React from "react";',
      'import ReactDOMClient from "react-dom/client";',
      "export default React;",
      `export const { ${reactNames.join(", ")} } = React;`,
      `export const { ${domNames.join(", ")} } = ReactDOMClient;`,
    ].join("\n"),
    resolveDir: here,
    loader: "js",
  },
  bundle: true, format: "esm", platform: "browser", target: "es2022", minify: production,
  define: { "process.env.NODE_ENV": JSON.stringify(production ? "production" : "development") },
  outfile: join(out, "react.js"), logLevel: "warning",
});
// from the bare "react", so that it is the one copy the page's import map names
writeFileSync(join(out, "react-dom-client.js"),
              `export { ${domNames.join(", ")} } from "react";\n`);
