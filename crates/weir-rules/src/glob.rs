//! Device / point / source patterns of a rule's `match:`.
//!
//! `*` matches any run of characters (including `/`, so `gh*` matches `gh1/climate`), `?` matches
//! exactly one character, everything else matches itself. A pattern without wildcards is an exact
//! comparison and `*` alone matches everything without looking at the text.

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Any,
    Exact(String),
    Glob(Vec<char>),
}

impl Pattern {
    pub fn new(p: &str) -> Pattern {
        if p == "*" {
            Pattern::Any
        } else if p.contains(['*', '?']) {
            Pattern::Glob(p.chars().collect())
        } else {
            Pattern::Exact(p.to_string())
        }
    }

    pub fn matches(&self, text: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(s) => s == text,
            Pattern::Glob(p) => glob_match(p, text),
        }
    }
}

/// Iterative wildcard match with single-star backtracking: O(len(p) * len(text)) worst case, no
/// allocation.
fn glob_match(p: &[char], text: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_shell_patterns_across_slashes() {
        let m = |p: &str, t: &str| Pattern::new(p).matches(t);
        assert!(m("*", "anything/at/all"));
        assert!(m("gh*/climate", "gh1/climate"));
        assert!(m("gh*/climate", "gh12/climate"));
        assert!(!m("gh*/climate", "gh1/bed1"));
        assert!(m("gh?/bed*", "gh1/bed3"));
        assert!(!m("gh?/bed*", "gh10/bed3"));
        assert!(m("*moist*", "moisture"));
        assert!(m("temperature", "temperature"));
        assert!(!m("temperature", "temperature2"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("°*", "°C"));
        assert_eq!(Pattern::new("x"), Pattern::Exact("x".into()));
    }
}
