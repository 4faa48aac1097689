// Errors the CLI reports as one line (no stack): the thing at fault and the fix.
export class CliError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message)
    this.name = 'CliError'
  }
}
