import { defineConfig } from 'vitest/config'

// Tests mount real FUSE file systems, make loop devices and build images with
// e2fsprogs and qemu-img: they run in forked processes, two files at a time
// (most of their time is spent waiting on mounts, loop devices and external
// tools; each test file works in its own temporary directories, and shared
// fixtures are built under a lock), with generous timeouts (these are not
// performance assertions).
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    fileParallelism: true,
    maxWorkers: 2,
    testTimeout: 120_000,
    hookTimeout: 180_000,
    reporters: ['default'],
  },
})
