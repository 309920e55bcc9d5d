//! Redis's glob patterns (`KEYS`, `SCAN ... MATCH`, `CONFIG GET`), matched
//! in time bounded by the product of the two lengths, whatever the pattern.

/// Redis's glob matching: `*`, `?`, `[abc]`, `[^a-z]`, `\x`. Iterative,
/// with one backtracking point (the last `*`): time at most the product of
/// the two lengths, and no recursion a long pattern could overflow the
/// stack with.
pub fn glob(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    // After the last `*` seen: where the pattern resumes, and the next
    // position of `s` to try it from.
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            while p < pattern.len() && pattern[p] == b'*' {
                p += 1;
            }
            star = Some((p, i));
            continue;
        }
        if p < pattern.len() {
            if let Some(len) = one(&pattern[p..], s[i]) {
                p += len;
                i += 1;
                continue;
            }
        }
        match star {
            Some((resume, from)) => {
                p = resume;
                i = from + 1;
                star = Some((resume, from + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Whether the pattern element at the start of `pattern` (`?`, a class,
/// an escape or a byte) matches `c`: its length if it does.
fn one(pattern: &[u8], c: u8) -> Option<usize> {
    match pattern {
        [b'?', ..] => Some(1),
        [b'\\', x, ..] => (*x == c).then_some(2),
        [b'[', rest @ ..] => {
            let (negate, mut at) = match rest.first() {
                Some(b'^') => (true, 1),
                _ => (false, 0),
            };
            let mut matched = false;
            loop {
                match &rest[at..] {
                    // An unclosed class matches nothing.
                    [] => return None,
                    [b']', ..] => break,
                    [b'\\', x, ..] => {
                        matched |= *x == c;
                        at += 2;
                    }
                    [a, b'-', b, ..] if *b != b']' => {
                        let (lo, hi) = if a <= b { (*a, *b) } else { (*b, *a) };
                        matched |= (lo..=hi).contains(&c);
                        at += 3;
                    }
                    [x, ..] => {
                        matched |= *x == c;
                        at += 1;
                    }
                }
            }
            (matched != negate).then_some(at + 2)
        }
        [x, ..] => (*x == c).then_some(1),
        [] => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_as_redis_does() {
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"a?c", b"abc"));
        assert!(!glob(b"a?c", b"ac"));
        assert!(glob(b"h[ae]llo", b"hello"));
        assert!(!glob(b"h[^e]llo", b"hello"));
        assert!(glob(b"h[a-b]llo", b"hbllo"));
        assert!(glob(b"a\\*", b"a*"));
        assert!(!glob(b"a\\*", b"ab"));
        assert!(glob(b"*a*b*", b"xxaxxbxx"));
        assert!(!glob(b"*a*b*c", b"xxaxxbxx"));
        assert!(glob(b"", b""));
        assert!(!glob(b"", b"a"));
        assert!(glob(b"**", b""));
    }

    #[test]
    fn a_hostile_pattern_costs_neither_stack_nor_time() {
        // Recursion on each star overflowed the stack with this; trying
        // every split took 10^12 steps with 60 stars and a mismatch.
        let stars = vec![b'*'; 100_000];
        assert!(glob(&stars, b"appendonly"));
        let mut slow = vec![b'*'; 60];
        slow.push(b'z');
        assert!(!glob(&slow, &[b'a'; 4096]));
    }
}
