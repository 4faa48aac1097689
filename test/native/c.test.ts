// The C of native/fuse/ tested on its own (no mount, no Node addon): each program
// in native/test/ is compiled with gcc, with AddressSanitizer and UBSan, warnings
// as errors, and run; it exits 1 naming the failed check ("expected X, saw Y"),
// or prints "ok N" after N checks. The sources are the ones the addon is built
// from (the patched binding.gyp lists the same files).
import { execFileSync, spawnSync } from 'child_process'
import fs from 'fs'
import os from 'os'
import path from 'path'
import { afterAll, describe, expect, it } from 'vitest'

const ROOT = path.join(__dirname, '..', '..')
const NATIVE = path.join(ROOT, 'native')
const out = fs.mkdtempSync(path.join(os.tmpdir(), 'vmdi-ctest-'))
afterAll(() => fs.rmSync(out, { recursive: true, force: true }))

const CFLAGS = [
  '-std=gnu11', '-O1', '-g', '-Wall', '-Wextra', '-Werror',
  '-fsanitize=address,undefined', '-fno-sanitize-recover=all',
  '-I' + NATIVE, '-I' + path.join(NATIVE, 'fuse'),
]

function pkgConfig(...args: string[]): string[] {
  return execFileSync('pkg-config', [...args, 'fuse'], { encoding: 'utf8' }).trim().split(/\s+/).filter(Boolean)
}

/** Compiles native/test/<name>.c with the given native/fuse/ sources, runs it, returns its output. */
function runC(name: string, sources: string[], libfuse = false): string {
  const exe = path.join(out, name)
  const args = [
    ...CFLAGS,
    ...(libfuse ? pkgConfig('--cflags') : []),
    path.join(NATIVE, 'test', name + '.c'),
    ...sources.map((s) => path.join(NATIVE, 'fuse', s)),
    '-o', exe,
    ...(libfuse ? pkgConfig('--libs') : []),
    '-pthread',
  ]
  const cc = spawnSync('gcc', args, { encoding: 'utf8' })
  if (cc.status !== 0) throw new Error(`gcc ${name}.c failed:\n${cc.stderr}`)
  const run = spawnSync(exe, [], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1' } })
  if (run.status !== 0) throw new Error(`${name} exited ${run.status} (signal ${run.signal}):\n${run.stderr}${run.stdout}`)
  return run.stdout
}

describe('native C', () => {
  it('ram_index: store, lookup, drop, slot reuse, reads, ring overflow, a random run against a shadow', () => {
    const stdout = runC('ram_index_test', ['ram_index.c'])
    expect(stdout).toMatch(/^ok \d+/)
    // the random run alone makes more than a million checks: it ran to the end
    expect(Number(/^ok (\d+)/.exec(stdout)![1])).toBeGreaterThan(1_000_000)
  })

  it('direct_path: the handle table, reads to EOF, writes, -errno, counters, watchdog slots', () => {
    expect(runC('direct_path_test', ['direct_path.c'])).toMatch(/^ok \d+/)
  })

  it('block_state: states over chunk and directory boundaries, sentinels and memory, retire, native reads and writes or PASS, the ordering, a random run against a shadow', () => {
    const stdout = runC('block_state_test', ['block_state.c', 'direct_path.c'])
    expect(stdout).toMatch(/^ok \d+/)
    // the random run (a million operations) alone makes more than ten million checks: it ran to the end
    expect(Number(/^ok (\d+)/.exec(stdout)![1])).toBeGreaterThan(10_000_000)
  })

  it('channel: FOPEN_PARALLEL_DIRECT_WRITES on the open replies of direct-path handles and of image handles with a data table only', () => {
    expect(runC('channel_test', ['channel.c', 'direct_path.c'], true)).toMatch(/^ok \d+/)
  })
})
