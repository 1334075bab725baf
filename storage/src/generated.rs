//! Generated inputs for the decoders' robustness tests: a deterministic
//! generator (xorshift) that mutates valid seed inputs (bit flips, random
//! bytes, insertions, deletions, duplicated and truncated ranges) and builds
//! token soups from a vocabulary. The tests of every crate that decodes
//! network input run it for `cases()` inputs: a bounded number in CI,
//! `TOCSIN_FUZZ_CASES=1000000` for a long run (docs/security.md).

/// Inputs a generated-input test runs: `TOCSIN_FUZZ_CASES`, or `default`.
pub fn cases(default: usize) -> usize {
    std::env::var("TOCSIN_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A deterministic source of generated inputs.
#[derive(Debug, Clone)]
pub struct Inputs {
    state: u64,
}

impl Inputs {
    pub fn new(seed: u64) -> Self {
        Self { state: seed | 1 }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// `seed` with one to four mutations, into `out`.
    pub fn mutate(&mut self, seed: &[u8], out: &mut Vec<u8>) {
        const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xff, b'\n', b'"', b'\\'];
        out.clear();
        out.extend_from_slice(seed);
        for _ in 0..1 + self.below(4) {
            let len = out.len();
            match self.below(8) {
                0 if len > 0 => {
                    let i = self.below(len);
                    out[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let i = self.below(len);
                    out[i] = self.next_u64() as u8;
                }
                2 if len > 0 => {
                    let i = self.below(len);
                    out[i] = INTERESTING[self.below(INTERESTING.len())];
                }
                3 => {
                    let at = self.below(len + 1);
                    let n = 1 + self.below(16);
                    let bytes: Vec<u8> = (0..n).map(|_| self.next_u64() as u8).collect();
                    out.splice(at..at, bytes);
                }
                4 if len > 0 => {
                    let at = self.below(len);
                    let n = 1 + self.below((len - at).min(64));
                    out.drain(at..at + n);
                }
                5 if len > 0 => {
                    let at = self.below(len);
                    let n = 1 + self.below((len - at).min(64));
                    let copy = out[at..at + n].to_vec();
                    let to = self.below(out.len() + 1);
                    out.splice(to..to, copy);
                }
                6 if len > 0 => out.truncate(self.below(len)),
                _ => {
                    let at = self.below(len + 1);
                    out.insert(at, INTERESTING[self.below(INTERESTING.len())]);
                }
            }
        }
    }

    /// Up to `max` tokens from `vocabulary`, joined by nothing or a space.
    pub fn soup(&mut self, vocabulary: &[&str], max: usize) -> String {
        let n = self.below(max + 1);
        let mut s = String::new();
        for _ in 0..n {
            s.push_str(vocabulary[self.below(vocabulary.len())]);
            if self.below(3) > 0 {
                s.push(' ');
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_mutates() {
        let (mut a, mut b) = (Inputs::new(7), Inputs::new(7));
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let mut changed = 0;
        for _ in 0..1000 {
            a.mutate(b"seed input", &mut x);
            b.mutate(b"seed input", &mut y);
            assert_eq!(x, y);
            changed += usize::from(x != b"seed input");
        }
        assert!(changed > 900, "{changed}");
    }
}
