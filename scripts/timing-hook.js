// A diagnostic require hook: the mean time spent inside Datapath.write, its live-map step
// (learn) and ImageRouter.write, printed to stderr when the daemon exits. It is how the README's
// per-write JavaScript cost was measured:
//   node -r ./scripts/timing-hook.js dist/src/cli.js -f STORE MNT     (then write, then unmount)
// Lines: "TIMING <what> <calls> <mean>us".
const Module = require('module')
const orig = Module.prototype.require
let done = false
process.on('exit', () => { for (const [k, v] of Object.entries(global.__t || {})) console.error('TIMING', k, v.n, (v.ns / v.n / 1000).toFixed(1) + 'us') })
Module.prototype.require = function (id) {
  const m = orig.apply(this, arguments)
  if (!done && /placement\/datapath$/.test(id) && m.Datapath) {
    done = true
    global.__t = {}
    const wrap = (proto, name, label) => {
      const f = proto[name]
      proto[name] = async function (...a) {
        const t0 = process.hrtime.bigint()
        try { return await f.apply(this, a) } finally {
          const t = global.__t[label] ??= { n: 0, ns: 0 }
          t.n++; t.ns += Number(process.hrtime.bigint() - t0)
        }
      }
    }
    wrap(m.Datapath.prototype, 'write', 'datapath.write')
    wrap(m.Datapath.prototype, 'learn', 'learn')
    const r = orig.call(this, '../placement/router')
    wrap(r.ImageRouter.prototype, 'write', 'router.write')
  }
  return m
}
