// Runs the built CLI (dist/, made by scripts/setup.sh or `npx tsc -p .`) as a child process.
import { spawnSync, SpawnSyncOptions } from 'child_process'
import path from 'path'

export const ROOT = path.resolve(__dirname, '..', '..')
export const CLI = path.join(ROOT, 'dist', 'src', 'cli.js')

export interface CliResult {
  status: number | null
  stdout: string
  stderr: string
}

export function runCli(args: string[], opts: SpawnSyncOptions = {}): CliResult {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 120_000, ...opts })
  return { status: r.status, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? '') }
}
