import { defineConfig } from 'vitest/config'

// Tests mount real FUSE file systems, make loop devices and build images with
// e2fsprogs and qemu-img: they run in forked processes, files one at a time,
// with generous timeouts (these are not performance assertions).
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 180_000,
    reporters: ['default'],
  },
})
