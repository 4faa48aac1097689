import { afterEach, describe, expect, it, vi } from 'vitest'
import { RepeatLimiter } from '../src/log'

describe('RepeatLimiter (repeated warnings per subject and kind)', () => {
  afterEach(() => vi.useRealTimers())

  it('logs the first few in full, then one count a minute, per subject and kind; a quiet minute ends the burst', () => {
    vi.useFakeTimers()
    const lines: string[] = []
    const r = new RepeatLimiter((m) => lines.push(m), 3, 60_000)
    for (let i = 0; i < 138; i++) r.warn('image vm1.img', 'container table write not understood', `image vm1.img: write ${i} not understood`)
    r.warn('image vm2.img', 'container table write not understood', 'image vm2.img: write 0 not understood')
    r.warn('image vm1.img', 'live map update failed', 'image vm1.img: update failed')
    expect(lines.slice(0, 3)).toEqual([
      'image vm1.img: write 0 not understood',
      'image vm1.img: write 1 not understood',
      expect.stringMatching(/^image vm1\.img: write 2 not understood \(further "container table write not understood" warnings of image vm1\.img are counted/),
    ])
    // another image and another kind are not held back by vm1's flood
    expect(lines.slice(3)).toEqual(['image vm2.img: write 0 not understood', 'image vm1.img: update failed'])
    vi.advanceTimersByTime(60_000)
    expect(lines.slice(5)).toEqual(['image vm1.img: 135 more "container table write not understood" warning(s) in the last 60 s, the last: image vm1.img: write 137 not understood'])
    r.warn('image vm1.img', 'container table write not understood', 'image vm1.img: write 138 not understood')
    vi.advanceTimersByTime(60_000)
    expect(lines.slice(6)).toEqual(['image vm1.img: 1 more "container table write not understood" warning(s) in the last 60 s, the last: image vm1.img: write 138 not understood'])
    vi.advanceTimersByTime(60_000) // a quiet minute: every burst ends
    expect(lines).toHaveLength(7)
    expect(r.size).toBe(0)
    r.warn('image vm1.img', 'container table write not understood', 'image vm1.img: write 139 not understood')
    expect(lines[7]).toBe('image vm1.img: write 139 not understood')
  })
})

describe('repeatKind (the image map warnings a guest can repeat)', () => {
  it('one kind for every write of the same sort, whatever its byte and reason', async () => {
    const { repeatKind } = await import('../src/placement/scan')
    expect(repeatKind('container table write at byte 4096 not understood (bad entry 7): map left as it was')).toBe(
      repeatKind('container table write at byte 123 not understood (other): map left as it was'),
    )
    expect(repeatKind('file system in volume 1: the write at byte 5 not learnt from (x): its map left as it was')).not.toBe(
      repeatKind('container table write at byte 5 not understood (x): map left as it was'),
    )
  })
})
