import { defineConfig } from "vitest/config";

// The native engine runs candle on its own threads: one test process at a time, files one
// after another, so 2-core CI machines are not oversubscribed.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    pool: "forks",
    maxWorkers: 1,
    fileParallelism: false,
    env: { CANDLE_NUM_THREADS: "2" },
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
