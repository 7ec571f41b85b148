import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // One software GPU (lavapipe) on 2 cores: files run one after another so
    // kernels do not fight over the same cores and timeouts stay meaningful.
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
