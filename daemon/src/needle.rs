//! A byte string searched for again and again (in every frame of a stream, in every
//! request's body), with its searcher built once, at the first search: `memmem::find` builds
//! one each call, and that set-up cost more than the search on the short inputs these see.

use std::sync::OnceLock;

use memchr::memmem;

#[derive(Debug)]
pub struct Needle {
    bytes: &'static [u8],
    finder: OnceLock<memmem::Finder<'static>>,
}

impl Needle {
    pub const fn new(bytes: &'static [u8]) -> Needle {
        Needle {
            bytes,
            finder: OnceLock::new(),
        }
    }

    pub fn bytes(&self) -> &'static [u8] {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Where it first is in `hay`.
    pub fn find(&self, hay: &[u8]) -> Option<usize> {
        self.finder
            .get_or_init(|| memmem::Finder::new(self.bytes))
            .find(hay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_memmem_finds() {
        static NEEDLE: Needle = Needle::new(b"ab");
        for hay in [&b""[..], b"a", b"ab", b"xxab", b"aab", b"ba", b"abab"] {
            assert_eq!(NEEDLE.find(hay), memmem::find(hay, b"ab"), "{hay:?}");
        }
    }
}
