//! Redis glob patterns (`*`, `?`, `[abc]`, `[^a-z]`, `\x`), matched the way
//! Redis' `stringmatchlen` does, so the L1 pass removes what `SCAN MATCH` finds.

/// True when `s` matches the Redis glob `p`.
pub(crate) fn matches(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    // Backtracking point for the last `*`: (pattern index after *, string index).
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    while pi < p.len() && p[pi] == b'*' {
                        pi += 1;
                    }
                    if pi == p.len() {
                        return true;
                    }
                    star = Some((pi, si));
                    continue;
                }
                b'?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'[' => {
                    if let Some((ok, next)) = class(p, pi, s[si])
                        && ok
                    {
                        pi = next;
                        si += 1;
                        continue;
                    }
                }
                b'\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == s[si] {
                        pi += 2;
                        si += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[si] {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Matches `c` against the class starting at `p[start] == b'['`; returns
/// (matched, index after the class), or `None` for an unterminated class
/// (Redis then treats the rest as the class; we treat it as no match).
fn class(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = i < p.len() && p[i] == b'^';
    if negate {
        i += 1;
    }
    let mut found = false;
    while i < p.len() && p[i] != b']' {
        if p[i] == b'\\' && i + 1 < p.len() {
            found |= p[i + 1] == c;
            i += 2;
        } else if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            let (lo, hi) = if p[i] <= p[i + 2] {
                (p[i], p[i + 2])
            } else {
                (p[i + 2], p[i])
            };
            found |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            found |= p[i] == c;
            i += 1;
        }
    }
    if i >= p.len() {
        return None;
    }
    Some((found != negate, i + 1))
}

/// Escapes the glob characters of a literal (a key prefix) for `SCAN MATCH`.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for ch in literal.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        matches(p.as_bytes(), s.as_bytes())
    }

    #[test]
    fn matches_like_redis() {
        assert!(m("*", ""));
        assert!(m("user:*", "user:42"));
        assert!(!m("user:*", "usr:42"));
        assert!(m("user:*:profile", "user:42:profile"));
        assert!(!m("user:*:profile", "user:42:prof"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-c]llo", "hbllo"));
        assert!(!m("h[a-c]llo", "hdllo"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("*a*b*", "xxaxxbxx"));
        assert!(!m("*a*b*", "xxbxxaxx"));
    }

    #[test]
    fn escaped_literal_matches_only_itself() {
        let lit = "we[ir]d*?:";
        let e = escape(lit);
        assert!(m(&e, lit));
        assert!(!m(&e, "wei d*?:"));
        assert!(m(&format!("{e}*"), "we[ir]d*?:k1"));
    }
}
