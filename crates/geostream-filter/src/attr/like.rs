//! CQL2 LIKE patterns: `%` any run of characters, `_` exactly one character, `\` escapes the
//! next character. Matching is case- and accent-sensitive unless CASEI / ACCENTI were applied.

use super::fold::{Fold, FoldIter};
use crate::error::{FilterError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok {
    Char(char),
    One,
    Many,
}

/// Shapes common enough to deserve a `str` method instead of the general matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Contains(Box<str>),
    General,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LikePattern {
    /// The pattern as written (after literal folds), escapes included.
    source: Box<str>,
    toks: Box<[Tok]>,
    shape: Shape,
}

impl LikePattern {
    pub(crate) fn compile(source: &str) -> Result<Self> {
        let mut toks = Vec::new();
        let mut chars = source.chars();
        while let Some(c) = chars.next() {
            let tok = match c {
                '\\' => Tok::Char(chars.next().ok_or_else(|| {
                    FilterError::Unsupported(format!(
                        "LIKE pattern '{source}' ends with the escape character \\"
                    ))
                })?),
                '%' => Tok::Many,
                '_' => Tok::One,
                c => Tok::Char(c),
            };
            // Consecutive `%` mean the same as one; merging keeps the matcher's backtracking
            // bounded by the number of distinct wildcards.
            if !(tok == Tok::Many && toks.last() == Some(&Tok::Many)) {
                toks.push(tok);
            }
        }
        let literal = |ts: &[Tok]| -> Option<Box<str>> {
            ts.iter()
                .map(|t| match t {
                    Tok::Char(c) => Some(*c),
                    _ => None,
                })
                .collect::<Option<String>>()
                .map(String::into_boxed_str)
        };
        let n = toks.len();
        let lead = toks.first() == Some(&Tok::Many);
        let trail = n > 0 && toks[n - 1] == Tok::Many;
        let shape = match (lead, trail) {
            (false, false) => literal(&toks).map(Shape::Exact),
            (false, true) => literal(&toks[..n - 1]).map(Shape::Prefix),
            (true, false) => literal(&toks[1..]).map(Shape::Suffix),
            (true, true) if n >= 2 => literal(&toks[1..n - 1]).map(Shape::Contains),
            (true, true) => Some(Shape::Contains("".into())),
        }
        .unwrap_or(Shape::General);
        Ok(Self {
            source: source.into(),
            toks: toks.into_boxed_slice(),
            shape,
        })
    }

    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    pub(crate) fn tokens(&self) -> &[Tok] {
        &self.toks
    }

    /// Whether `s`, after `fold`, matches.
    pub(crate) fn matches(&self, s: &str, fold: Fold) -> bool {
        if fold.is_none() {
            match &self.shape {
                Shape::Exact(p) => return s == &**p,
                Shape::Prefix(p) => return s.starts_with(&**p),
                Shape::Suffix(p) => return s.ends_with(&**p),
                Shape::Contains(p) => return s.contains(&**p),
                Shape::General => {}
            }
        }
        match_tokens(&self.toks, FoldIter::new(s, fold))
    }
}

/// Greedy wildcard matching with one backtrack point: when a literal fails after a `%`, the
/// `%` takes one more character and matching resumes. A later `%` supersedes an earlier one,
/// which is what keeps this linear in practice and never worse than O(n·m).
fn match_tokens(toks: &[Tok], mut s: FoldIter<'_>) -> bool {
    let mut ti = 0;
    let mut resume: Option<(usize, FoldIter<'_>)> = None;
    loop {
        let mut ahead = s.clone();
        let Some(c) = ahead.next() else {
            return toks[ti..].iter().all(|t| *t == Tok::Many);
        };
        match toks.get(ti) {
            Some(Tok::Many) => {
                resume = Some((ti, s.clone()));
                ti += 1;
                continue;
            }
            Some(Tok::One) => {
                ti += 1;
                s = ahead;
                continue;
            }
            Some(Tok::Char(p)) if *p == c => {
                ti += 1;
                s = ahead;
                continue;
            }
            _ => {}
        }
        match &mut resume {
            Some((star, from)) => {
                from.next();
                s = from.clone();
                ti = *star + 1;
            }
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn like(s: &str, p: &str) -> bool {
        LikePattern::compile(p).unwrap().matches(s, Fold::NONE)
    }

    fn like_general(s: &str, p: &str) -> bool {
        match_tokens(
            LikePattern::compile(p).unwrap().tokens(),
            FoldIter::new(s, Fold::NONE),
        )
    }

    #[test]
    fn wildcards() {
        for (s, p, want) in [
            ("bus 12", "bus%", true),
            ("a bus", "bus%", false),
            ("bus", "bus", true),
            ("buss", "bus", false),
            ("city bus", "%bus", true),
            ("city bus line", "%bus%", true),
            ("", "%", true),
            ("", "", true),
            ("x", "", false),
            ("abc", "a_c", true),
            ("abbc", "a_c", false),
            ("abc", "a%c", true),
            ("ac", "a%c", true),
            ("abcbc", "a%bc", true),
            ("abcbd", "a%bc", false),
            ("mississippi", "m%iss%pi", true),
            ("mississippi", "m%iss%pix", false),
            ("100%", "100\\%", true),
            ("1000", "100\\%", false),
            ("a_b", "a\\_b", true),
            ("axb", "a\\_b", false),
            ("back\\slash", "back\\\\slash", true),
            ("日本語", "日_語", true),
            ("日本語", "__", false),
            ("aaa", "%a%a%a%", true),
            ("aa", "%a%a%a%", false),
        ] {
            assert_eq!(like(s, p), want, "{s:?} LIKE {p:?}");
            assert_eq!(
                like_general(s, p),
                want,
                "{s:?} LIKE {p:?} (general matcher)"
            );
        }
    }

    #[test]
    fn folded() {
        let p = LikePattern::compile("cafe%").unwrap();
        assert!(p.matches("CAFÉ noir", Fold::CASEI.with(Fold::ACCENTI)));
        assert!(!p.matches("CAFÉ noir", Fold::CASEI));
        assert!(!p.matches("CAFÉ noir", Fold::NONE));
    }

    #[test]
    fn dangling_escape_is_an_error() {
        let e = LikePattern::compile("abc\\").unwrap_err();
        assert!(
            e.to_string().contains("ends with the escape character"),
            "{e}"
        );
    }
}
