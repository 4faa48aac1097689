// --exclude globs (src/exclude.ts): store-relative paths matched the way an
// admin expects from a shell, with dotfiles matched and `!` taken literally.
import { describe, expect, it } from 'vitest'
import { excludeMatcher } from '../src/exclude'

/** The paths of `paths` that `globs` exclude. */
function excluded(globs: string[], paths: string[]): string[] {
  const m = excludeMatcher(globs)
  return paths.filter(m)
}

describe('excludeMatcher', () => {
  it('excludes nothing without globs', () => {
    expect(excluded([], ['a.img', '.hidden', 'x/y/z.vmdk'])).toEqual([])
  })

  it('* and ? stay within one name', () => {
    const paths = ['a.img', 'vm1/a.img', 'ab.img', 'b.img', 'a.img.bak']
    expect(excluded(['*.img'], paths)).toEqual(['a.img', 'ab.img', 'b.img'])
    expect(excluded(['?.img'], paths)).toEqual(['a.img', 'b.img'])
    expect(excluded(['vm1/*'], ['vm1/a.img', 'vm1/sub/a.img', 'vm10/a.img'])).toEqual(['vm1/a.img'])
    expect(excluded(['vm?'], ['vm/', 'vm/a', 'vm1'])).toEqual(['vm1'])
  })

  it('** crosses directories, also none at all', () => {
    const paths = ['scratch/a.img', 'scratch/x/y/b.img', 'scratchy/a.img', 'other/scratch/a.img', 'a.iso', 'isos/deep/b.iso']
    expect(excluded(['scratch/**'], paths)).toEqual(['scratch/a.img', 'scratch/x/y/b.img'])
    expect(excluded(['**/*.iso'], paths)).toEqual(['a.iso', 'isos/deep/b.iso'])
    expect(excluded(['a/**/b.img'], ['a/b.img', 'a/x/b.img', 'a/x/y/b.img', 'a/xb.img', 'ab.img'])).toEqual(['a/b.img', 'a/x/b.img', 'a/x/y/b.img'])
  })

  it('classes, negated classes and POSIX classes as in a shell', () => {
    const paths = ['vm0.img', 'vm7.img', 'vma.img', 'vm10.img']
    expect(excluded(['vm[0-9].img'], paths)).toEqual(['vm0.img', 'vm7.img'])
    expect(excluded(['vm[!0-9].img'], paths)).toEqual(['vma.img'])
    expect(excluded(['vm[[:digit:]].img'], paths)).toEqual(['vm0.img', 'vm7.img'])
  })

  it('braces: lists and ranges', () => {
    const paths = ['a.vmdk', 'a.qcow2', 'a.img', 'vm1.img', 'vm3.img', 'vm4.img']
    expect(excluded(['*.{vmdk,qcow2}'], paths)).toEqual(['a.vmdk', 'a.qcow2'])
    expect(excluded(['vm{1..3}.img'], paths)).toEqual(['vm1.img', 'vm3.img'])
  })

  it('matches dotfiles and dot directories (a hidden name does not keep an image in)', () => {
    expect(excluded(['*.img'], ['.tmp.img', 'a.img'])).toEqual(['.tmp.img', 'a.img'])
    expect(excluded(['**/*.img'], ['.snap/x.img', 'a/.b/c.img'])).toEqual(['.snap/x.img', 'a/.b/c.img'])
    expect(excluded(['scratch/**'], ['scratch/.cache/x.img'])).toEqual(['scratch/.cache/x.img'])
  })

  it('takes a leading ! literally, not as "everything but"', () => {
    expect(excluded(['!keep.img'], ['keep.img', 'other.img', '!keep.img'])).toEqual(['!keep.img'])
  })

  it('is anchored: a glob names the whole relative path', () => {
    expect(excluded(['a.img'], ['a.img', 'x/a.img', 'a.img2', 'ba.img'])).toEqual(['a.img'])
  })

  it('any of several globs excludes', () => {
    expect(excluded(['scratch/**', '*.iso'], ['scratch/a.img', 'b.iso', 'c.img'])).toEqual(['scratch/a.img', 'b.iso'])
  })

  it('special characters of regular expressions are literal', () => {
    expect(excluded(['a+b(1).img'], ['a+b(1).img', 'aab1.img'])).toEqual(['a+b(1).img'])
    expect(excluded(['$x^.img'], ['$x^.img', 'x.img'])).toEqual(['$x^.img'])
  })
})
