// Sizes (src/size.ts): parsing command-line sizes, and the one formatter of bytes for people.
import { describe, expect, it } from 'vitest'
import { formatSize, parseSize } from '../src/size'

describe('parseSize', () => {
  it('reads binary multiples and plain bytes', () => {
    expect(parseSize('512M', '--x')).toBe(512 * 2 ** 20)
    expect(parseSize('4g', '--x')).toBe(4 * 2 ** 30)
    expect(parseSize('32KiB', '--x')).toBe(32768)
    expect(parseSize('1.5K', '--x')).toBe(1536)
    expect(parseSize('1073741824', '--x')).toBe(2 ** 30)
  })

  it('names the option when the value is not a size', () => {
    expect(() => parseSize('lots', '--ram-cache')).toThrow('--ram-cache "lots" is not a size: write e.g. 512M, 4G or 1073741824')
  })
})

describe('formatSize', () => {
  it('picks the largest unit the value reaches, one decimal; whole bytes below 1 KiB', () => {
    expect(formatSize(0)).toBe('0 B')
    expect(formatSize(1023)).toBe('1023 B')
    expect(formatSize(1024)).toBe('1.0 KiB')
    expect(formatSize(1536)).toBe('1.5 KiB')
    expect(formatSize(2 ** 20 - 1)).toBe('1024.0 KiB')
    expect(formatSize(2 ** 20)).toBe('1.0 MiB')
    expect(formatSize(3.25 * 2 ** 30)).toBe('3.3 GiB')
    expect(formatSize(2 * 2 ** 40)).toBe('2.0 TiB')
    expect(formatSize(5 * 2 ** 50)).toBe('5.0 PiB')
    expect(formatSize(2 ** 62)).toBe('4096.0 PiB')
    expect(formatSize(3.25 * 2 ** 30, { digits: 2 })).toBe('3.25 GiB')
  })

  it('shows a fixed unit with the given decimals', () => {
    expect(formatSize(1.5 * 2 ** 20, { unit: 'MiB' })).toBe('1.5 MiB')
    expect(formatSize(1000, { unit: 'MiB' })).toBe('0.0 MiB')
    expect(formatSize(2 ** 29, { unit: 'GiB', digits: 2 })).toBe('0.50 GiB')
    expect(formatSize(700 * 2 ** 20, { unit: 'MiB', digits: 0 })).toBe('700 MiB')
    expect(formatSize(2 * 2 ** 40, { unit: 'TiB', digits: 0 })).toBe('2 TiB')
    expect(formatSize(2 * 2 ** 40, { unit: 'GiB' })).toBe('2048.0 GiB')
    expect(formatSize(512, { unit: 'B' })).toBe('512 B')
  })

  it('exact: a whole number of the unit, else the bytes spelled out', () => {
    expect(formatSize(32768, { unit: 'KiB', exact: true })).toBe('32 KiB')
    expect(formatSize(2 ** 20, { unit: 'KiB', exact: true })).toBe('1024 KiB')
    expect(formatSize(1000, { unit: 'KiB', exact: true })).toBe('1000 bytes')
    expect(formatSize(2 ** 30, { unit: 'MiB', exact: true })).toBe('1024 MiB')
    expect(formatSize(2 ** 20 + 4096, { unit: 'MiB', exact: true })).toBe('1052672 bytes')
    expect(formatSize(0, { unit: 'MiB', exact: true })).toBe('0 MiB')
  })
})
