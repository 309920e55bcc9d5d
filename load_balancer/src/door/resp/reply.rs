//! RESP answers and their encoding in RESP2 or, after `HELLO 3`, RESP3: one
//! value type for both, so a command builds its answer once and the
//! connection's protocol decides the bytes (a nil is `$-1` or `_`, a map a
//! flat array or `%`).

use bytes::{BufMut, Bytes, BytesMut};

/// One RESP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+text`: a status such as `OK` or `PONG`. Never holds CR or LF.
    Simple(&'static str),
    /// `-CODE message`: the text after the dash, CR and LF replaced.
    Error(String),
    /// `:n`.
    Int(i64),
    /// `$len bytes`: any bytes.
    Bulk(Bytes),
    /// No value: `$-1` (RESP2) or `_` (RESP3).
    Nil,
    /// `*n` elements.
    Array(Vec<Resp>),
    /// Pairs: `%n` in RESP3, a flat array of 2n elements in RESP2.
    Map(Vec<(Resp, Resp)>),
    /// Text meant to be shown (INFO): `=len txt:...` in RESP3, a bulk
    /// string in RESP2.
    Verbatim(String),
}

impl Resp {
    /// `+OK`.
    pub const OK: Resp = Resp::Simple("OK");

    /// A bulk string of `text`.
    pub fn text(text: impl Into<String>) -> Resp {
        Resp::Bulk(Bytes::from(text.into()))
    }

    /// `-ERR message`.
    pub fn err(message: impl std::fmt::Display) -> Resp {
        Resp::Error(format!("ERR {message}"))
    }

    /// An error with its own code (`NOAUTH`, `WRONGPASS`, `READONLY`...).
    pub fn coded(code: &str, message: impl std::fmt::Display) -> Resp {
        Resp::Error(format!("{code} {message}"))
    }

    /// Appends this answer's bytes to `out`, in RESP3 when `resp3`.
    pub fn encode(&self, resp3: bool, out: &mut BytesMut) {
        match self {
            Resp::Simple(text) => {
                out.put_u8(b'+');
                out.put_slice(text.as_bytes());
                out.put_slice(b"\r\n");
            }
            Resp::Error(text) => {
                out.put_u8(b'-');
                // A line break inside would end the error early and make
                // the rest look like another answer.
                for b in text.bytes() {
                    out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
                }
                out.put_slice(b"\r\n");
            }
            Resp::Int(n) => {
                out.put_u8(b':');
                put_decimal(out, *n);
                out.put_slice(b"\r\n");
            }
            Resp::Bulk(bytes) => put_bulk(out, b'$', bytes),
            Resp::Nil if resp3 => out.put_slice(b"_\r\n"),
            Resp::Nil => out.put_slice(b"$-1\r\n"),
            Resp::Array(items) => {
                out.put_u8(b'*');
                put_decimal(out, items.len() as i64);
                out.put_slice(b"\r\n");
                for item in items {
                    item.encode(resp3, out);
                }
            }
            Resp::Map(pairs) => {
                if resp3 {
                    out.put_u8(b'%');
                    put_decimal(out, pairs.len() as i64);
                } else {
                    out.put_u8(b'*');
                    put_decimal(out, (pairs.len() * 2) as i64);
                }
                out.put_slice(b"\r\n");
                for (k, v) in pairs {
                    k.encode(resp3, out);
                    v.encode(resp3, out);
                }
            }
            Resp::Verbatim(text) if resp3 => {
                let mut body = Vec::with_capacity(text.len() + 4);
                body.extend_from_slice(b"txt:");
                body.extend_from_slice(text.as_bytes());
                put_bulk(out, b'=', &body);
            }
            Resp::Verbatim(text) => put_bulk(out, b'$', text.as_bytes()),
        }
    }

    /// Bytes this answer takes encoded, about (for the output bound).
    pub fn weight(&self) -> usize {
        match self {
            Resp::Bulk(b) => b.len() + 16,
            Resp::Error(t) => t.len() + 4,
            Resp::Verbatim(t) => t.len() + 20,
            Resp::Array(items) => 16 + items.iter().map(Resp::weight).sum::<usize>(),
            Resp::Map(pairs) => {
                16 + pairs
                    .iter()
                    .map(|(k, v)| k.weight() + v.weight())
                    .sum::<usize>()
            }
            _ => 16,
        }
    }
}

fn put_bulk(out: &mut BytesMut, kind: u8, bytes: &[u8]) {
    out.reserve(bytes.len() + 16);
    out.put_u8(kind);
    put_decimal(out, bytes.len() as i64);
    out.put_slice(b"\r\n");
    out.put_slice(bytes);
    out.put_slice(b"\r\n");
}

fn put_decimal(out: &mut BytesMut, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &Resp, resp3: bool) -> Vec<u8> {
        let mut out = BytesMut::new();
        r.encode(resp3, &mut out);
        out.to_vec()
    }

    #[test]
    fn every_shape_in_both_protocols() {
        assert_eq!(wire(&Resp::OK, false), b"+OK\r\n");
        assert_eq!(wire(&Resp::err("boom"), false), b"-ERR boom\r\n");
        assert_eq!(wire(&Resp::Int(-42), false), b":-42\r\n");
        assert_eq!(
            wire(&Resp::Int(i64::MIN), false),
            b":-9223372036854775808\r\n"
        );
        assert_eq!(
            wire(&Resp::Bulk(Bytes::from_static(b"a\r\n")), true),
            b"$3\r\na\r\n\r\n"
        );
        assert_eq!(wire(&Resp::Nil, false), b"$-1\r\n");
        assert_eq!(wire(&Resp::Nil, true), b"_\r\n");
        let map = Resp::Map(vec![(Resp::text("k"), Resp::Int(1))]);
        assert_eq!(wire(&map, false), b"*2\r\n$1\r\nk\r\n:1\r\n");
        assert_eq!(wire(&map, true), b"%1\r\n$1\r\nk\r\n:1\r\n");
        assert_eq!(wire(&Resp::Verbatim("a".into()), true), b"=5\r\ntxt:a\r\n");
        assert_eq!(wire(&Resp::Verbatim("a".into()), false), b"$1\r\na\r\n");
    }

    #[test]
    fn an_error_never_spans_lines() {
        assert_eq!(wire(&Resp::err("a\r\nb"), false), b"-ERR a  b\r\n");
    }
}
