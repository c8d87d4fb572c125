//! CASEI / ACCENTI as lazy character streams, so comparisons and LIKE on folded strings
//! never build a new string.

use std::iter::{Filter, FlatMap};
use std::str::Chars;

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::{Decompositions, UnicodeNormalization};

/// Which folds apply to a string: a bit set of [`Fold::CASEI`] and [`Fold::ACCENTI`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Fold(u8);

impl Fold {
    pub(crate) const NONE: Fold = Fold(0);
    pub(crate) const CASEI: Fold = Fold(1);
    pub(crate) const ACCENTI: Fold = Fold(2);

    pub(crate) fn with(self, other: Fold) -> Fold {
        Fold(self.0 | other.0)
    }

    pub(crate) fn is_none(self) -> bool {
        self.0 == 0
    }

    pub(crate) fn has(self, other: Fold) -> bool {
        self.0 & other.0 == other.0
    }
}

fn lower(c: char) -> std::char::ToLowercase {
    c.to_lowercase()
}

fn keep(c: &char) -> bool {
    !is_combining_mark(*c)
}

type Lower<'a> = FlatMap<Chars<'a>, std::char::ToLowercase, fn(char) -> std::char::ToLowercase>;
type Strip<'a> = Filter<Decompositions<Chars<'a>>, fn(&char) -> bool>;
type StripLower<'a> =
    FlatMap<Strip<'a>, std::char::ToLowercase, fn(char) -> std::char::ToLowercase>;

/// The characters of a string after its folds: accents are removed first (canonical
/// decomposition without combining marks), then letters are lower-cased.
#[derive(Clone)]
pub(crate) enum FoldIter<'a> {
    Plain(Chars<'a>),
    Lower(Lower<'a>),
    Strip(Strip<'a>),
    StripLower(StripLower<'a>),
}

impl<'a> FoldIter<'a> {
    pub(crate) fn new(s: &'a str, fold: Fold) -> Self {
        let strip = || s.nfd().filter(keep as fn(&char) -> bool);
        match (fold.has(Fold::ACCENTI), fold.has(Fold::CASEI)) {
            (false, false) => FoldIter::Plain(s.chars()),
            (false, true) => FoldIter::Lower(s.chars().flat_map(lower as fn(char) -> _)),
            (true, false) => FoldIter::Strip(strip()),
            (true, true) => FoldIter::StripLower(strip().flat_map(lower as fn(char) -> _)),
        }
    }
}

impl Iterator for FoldIter<'_> {
    type Item = char;

    #[inline]
    fn next(&mut self) -> Option<char> {
        match self {
            FoldIter::Plain(i) => i.next(),
            FoldIter::Lower(i) => i.next(),
            FoldIter::Strip(i) => i.next(),
            FoldIter::StripLower(i) => i.next(),
        }
    }
}

/// Applies folds to a literal at compile time.
pub(crate) fn fold_string(s: &str, fold: Fold) -> String {
    FoldIter::new(s, fold).collect()
}

/// Compares two strings after their folds, in code point order (the order of Rust's `str`
/// and of SQL's byte-wise `C` collation on UTF-8).
pub(crate) fn cmp_folded(a: &str, fa: Fold, b: &str, fb: Fold) -> std::cmp::Ordering {
    if fa.is_none() && fb.is_none() {
        return a.cmp(b);
    }
    FoldIter::new(a, fa).cmp(FoldIter::new(b, fb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds() {
        assert_eq!(fold_string("Ümlaut Straße", Fold::CASEI), "ümlaut straße");
        assert_eq!(fold_string("Ümlaut Café", Fold::ACCENTI), "Umlaut Cafe");
        assert_eq!(
            fold_string("Ümlaut Café", Fold::ACCENTI.with(Fold::CASEI)),
            "umlaut cafe"
        );
        assert_eq!(
            cmp_folded("ABC", Fold::CASEI, "abc", Fold::NONE),
            std::cmp::Ordering::Equal
        );
        assert_eq!(
            cmp_folded("abd", Fold::NONE, "abc", Fold::NONE),
            std::cmp::Ordering::Greater
        );
        assert_eq!(
            cmp_folded("café", Fold::ACCENTI, "cafe", Fold::NONE),
            std::cmp::Ordering::Equal
        );
    }
}
