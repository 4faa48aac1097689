// --exclude GLOB: which files of the store are never introspected. Paths are
// relative to the store, '/'-separated, without a leading slash ("vm1/disk.img").
//
// Globs as an admin writes them in a shell: `*` and `?` within one name,
// `**` across directories (`scratch/**`, `**/*.iso`, `a/**/b` also matches
// `a/b`), classes (`vm[0-9].img`, `[!a]*`, `[[:digit:]]`), braces
// (`*.{vmdk,qcow2}`, `vm{1..3}.img`). Unlike a shell, `*` also matches names
// starting with a dot (an image's hidden name does not keep it in), and a
// leading `!` is a literal character, not a negation (an exclude that meant
// "everything but" would be a surprise). Matching is by picomatch.
import picomatch from 'picomatch'

// posix: `[!a]` negates a class, as in a shell (picomatch reads `[!` literally otherwise).
const OPTIONS: picomatch.PicomatchOptions = { dot: true, nonegate: true, posix: true, windows: false }

/** Whether a store-relative path matches any of `globs` (none: nothing is excluded). */
export function excludeMatcher(globs: readonly string[]): (rel: string) => boolean {
  if (!globs.length) return () => false
  const match = picomatch([...globs], OPTIONS)
  return (rel) => match(rel)
}
