// One logger for the daemon and the CLI: lines with an ISO time, a level and
// a message naming the object (image path, mount point) it is about.
export type Level = 'debug' | 'info' | 'warn' | 'error'
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 }

let threshold: Level = (process.env.VMDI_LOG_LEVEL as Level) in ORDER ? (process.env.VMDI_LOG_LEVEL as Level) : 'info'
let sink: (line: string) => void = (line) => process.stderr.write(line + '\n')

export function setLogLevel(level: Level): void {
  threshold = level
}

export function setLogSink(fn: (line: string) => void): void {
  sink = fn
}

function emit(level: Level, msg: string): void {
  if (ORDER[level] < ORDER[threshold]) return
  sink(`${new Date().toISOString()} ${level.padEnd(5)} ${msg}`)
}

export const log = {
  debug: (m: string) => emit('debug', m),
  info: (m: string) => emit('info', m),
  warn: (m: string) => emit('warn', m),
  error: (m: string) => emit('error', m),
}
