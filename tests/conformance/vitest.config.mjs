// Runs the published suite's own entry point, unmodified: vitest's default include pattern
// skips node_modules, which is where the package's test runner lives.
export default {
  test: {
    include: ["node_modules/@durable-streams/server-conformance-tests/dist/test-runner.js"],
    exclude: [],
  },
}
