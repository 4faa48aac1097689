#!/usr/bin/env node
// Builds our own syscall addon (native/, for what Node's fs lacks) and
// fuse-native's addon from source against Debian's libfuse-dev (libfuse 2.9).
// The published prebuild is replaced because patches/fuse-native+2.2.6.patch changes
// its C code (nanosecond times, 64-bit stat/statfs, recycled thread state, exit
// notification, direct_io per open, extra mount options) and its binding.gyp compiles
// our C into the same addon: native/fuse/*.c (the direct path, the RAM index, the
// channel that sets FOPEN_PARALLEL_DIRECT_WRITES), found as ../../native from
// node_modules/fuse-native. node-gyp-build loads build/Release before prebuilds/, so
// the patched addon wins.
'use strict'
const { execFileSync } = require('child_process')
const fs = require('fs')
const path = require('path')

const dir = path.join(__dirname, '..', 'node_modules', 'fuse-native')
if (!fs.existsSync(dir)) {
  console.error('build-fuse-native: node_modules/fuse-native is missing: run npm ci first')
  process.exit(1)
}
// The patched binding.gyp names our sources relative to itself.
const ourFuse = path.join(dir, '..', '..', 'native', 'fuse', 'vmdi_fuse.c')
if (!fs.existsSync(ourFuse)) {
  console.error('build-fuse-native: ' + ourFuse + ' is missing: fuse-native must sit in this project\'s node_modules, next to native/')
  process.exit(1)
}
try {
  execFileSync('pkg-config', ['--exists', 'fuse'])
} catch {
  console.error('build-fuse-native: libfuse 2 headers not found: apt-get install libfuse-dev pkg-config (scripts/setup.sh does this)')
  process.exit(1)
}
// npm puts its bundled node-gyp on PATH for lifecycle scripts; fall back to npm's copy.
let gyp = ['node-gyp']
try {
  execFileSync('node-gyp', ['--version'], { stdio: 'ignore' })
} catch {
  const npmDir = path.dirname(path.dirname(require.resolve('npm/package.json', { paths: ['/usr/lib/node_modules', '/usr/local/lib/node_modules'] })))
  gyp = [process.execPath, path.join(npmDir, 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js')]
}
// Build against the headers of the running Node (Debian/NodeSource ship them under
// <prefix>/include/node); node-gyp would otherwise download them, and only the npm
// and Debian registries are reachable here.
const args = ['rebuild', '--release']
const prefix = path.dirname(path.dirname(process.execPath))
const nodedir = process.env.npm_config_nodedir ||
  (fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? prefix : '')
if (nodedir) args.push('--nodedir=' + nodedir)
const ours = path.join(__dirname, '..', 'native')
for (const [cwd, product] of [[dir, 'fuse.node'], [ours, 'vmdi_sys.node']]) {
  execFileSync(gyp[0], [...gyp.slice(1), ...args], { cwd, stdio: 'inherit' })
  const built = path.join(cwd, 'build', 'Release', product)
  if (!fs.existsSync(built)) {
    console.error('build-fuse-native: node-gyp finished but ' + built + ' is missing')
    process.exit(1)
  }
}
