// The project root (where package.json and native/ live), from src/ or dist/src/.
import fs from 'fs'
import path from 'path'

function findRoot(): string {
  let dir = __dirname
  for (let i = 0; i < 6; i++) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir
    dir = path.dirname(dir)
  }
  throw new Error(`package.json not found above ${__dirname}`)
}

export const PROJECT_ROOT = findRoot()
export const VERSION: string = JSON.parse(fs.readFileSync(path.join(PROJECT_ROOT, 'package.json'), 'utf8')).version
