//! Tests of the read checker (against a full-history reference), the value tags and the generator.

use std::collections::BTreeMap;

use super::*;

#[test]
fn model_tells_fresh_stale_and_wrong_reads() {
    use ReadCheck::{Fresh, Stale, Wrong};
    let mut m = LaneModel::default();
    assert_eq!(m.read(1, None), Fresh);
    assert_eq!(m.read(1, Some(1)), Wrong);
    m.written(1, 1);
    assert_eq!(m.read(1, None), Stale);
    assert_eq!(m.read(1, Some(1)), Fresh);
    m.maybe_written(1, 2);
    m.maybe_written(1, 3);
    assert_eq!(m.read(1, Some(2)), Fresh);
    // Settled at 2: 1 is now an old value, 9 was never written, and 3
    // (outcome unknown, written after 2) may still land.
    assert_eq!(m.read(1, Some(1)), Stale);
    assert_eq!(m.read(1, Some(9)), Wrong);
    assert_eq!(m.read(1, Some(2)), Fresh);
    assert_eq!(m.read(1, Some(3)), Fresh);
    assert_eq!(m.read(1, Some(2)), Stale);
    m.maybe_written(2, 4);
    assert_eq!(m.read(2, None), Fresh);
    // A number above any the lane issued was never written.
    assert_eq!(m.read(2, Some(5)), Wrong);
}

#[test]
fn a_value_naming_another_key_or_client_is_wrong() {
    use ReadCheck::{Fresh, Stale, Wrong};
    let mut m = LaneModel::default();
    // Lane-local keys 0 and 1 are the client's keys 3 and 19.
    m.written(0, 1);
    m.written(1, 2);
    m.written(0, 3);
    let value = |key, seq| parse_value(7, &make_value(7, key, seq, 16));
    assert_eq!(judge(&mut m, 0, 3, Some(value(3, 3))), Fresh);
    assert_eq!(judge(&mut m, 0, 3, Some(value(3, 1))), Stale);
    // Key 19's value read from key 3: a mix-up, whatever its number.
    assert_eq!(judge(&mut m, 0, 3, Some(value(19, 2))), Wrong);
    assert_eq!(judge(&mut m, 0, 3, Some(value(19, 3))), Wrong);
    // Another client's value, or bytes that are no value of ours.
    let theirs = parse_value(7, &make_value(8, 3, 3, 16));
    assert_eq!(judge(&mut m, 0, 3, Some(theirs)), Wrong);
    assert_eq!(judge(&mut m, 0, 3, Some(parse_value(7, b"7:3:"))), Wrong);
    assert_eq!(judge(&mut m, 1, 19, None), Stale);
    assert_eq!(judge(&mut m, 1, 19, Some(value(19, 2))), Fresh);
}

/// One key in [`ReferenceModel`]: settled, pending, history.
type ReferenceKey = (Option<u64>, Vec<Option<u64>>, Vec<u64>);

/// The model as it was before it was made dense: one struct per key.
/// The reference the dense one must agree with.
#[derive(Debug, Default)]
struct ReferenceModel {
    keys: BTreeMap<u64, ReferenceKey>,
}

impl ReferenceModel {
    fn written(&mut self, key: u64, seq: u64) {
        let (settled, pending, history) = self.keys.entry(key).or_default();
        *settled = Some(seq);
        pending.clear();
        history.push(seq);
    }

    fn maybe_written(&mut self, key: u64, seq: u64) {
        let (_, pending, history) = self.keys.entry(key).or_default();
        pending.push(Some(seq));
        history.push(seq);
    }

    fn read(&mut self, key: u64, got: Option<u64>) -> ReadCheck {
        let (settled, pending, history) = self.keys.entry(key).or_default();
        if got == *settled {
            ReadCheck::Fresh
        } else if let Some(pos) = pending.iter().position(|v| *v == got) {
            *settled = got;
            pending.drain(..=pos);
            ReadCheck::Fresh
        } else if got.is_none_or(|seq| history.contains(&seq)) {
            ReadCheck::Stale
        } else {
            ReadCheck::Wrong
        }
    }
}

#[derive(Debug, Clone)]
enum ModelOp {
    Written(u64, u64),
    MaybeWritten(u64, u64),
    /// A read of a key returning a value that names a key, or none.
    Read(u64, Option<(u64, u64)>),
}

/// Operations on keys `0..6` with values numbered in increasing order
/// (some numbers skipped: a lane's other keys took them), as a lane makes
/// them, and reads of no value, of values written (named after the key
/// they were written to), and of values never written (named after the
/// key read, or another).
fn model_ops() -> impl proptest::strategy::Strategy<Value = Vec<ModelOp>> {
    use proptest::prelude::*;
    let op = (
        0u8..3,
        0u64..6,
        0u64..3,
        proptest::option::of((0usize..64, 0u64..6)),
        0u8..3,
    );
    proptest::collection::vec(op, 0..200).prop_map(move |raw| {
        let mut next = 0;
        let mut written: Vec<(u64, u64)> = Vec::new();
        raw.into_iter()
            .map(|(kind, key, skip, got, forged)| {
                let got = got.map(|(pick, other)| match (forged, written.get(pick)) {
                    // Written earlier, named after its own key.
                    (0, Some(&(seq, to))) => (seq, to),
                    // Never written: a number past the last one.
                    (1, _) => (next + 1 + skip, key),
                    _ => (next + 1 + skip, other),
                });
                match kind {
                    0 | 1 => {
                        next += 1 + skip;
                        written.push((next, key));
                        if kind == 0 {
                            ModelOp::Written(key, next)
                        } else {
                            ModelOp::MaybeWritten(key, next)
                        }
                    }
                    _ => ModelOp::Read(key, got),
                }
            })
            .collect()
    })
}

fn agrees_with_the_reference(ops: &[ModelOp], mut model: LaneModel) -> Result<(), String> {
    let mut reference = ReferenceModel::default();
    for (n, op) in ops.iter().enumerate() {
        match *op {
            ModelOp::Written(key, seq) => {
                model.written(key, seq);
                reference.written(key, seq);
            }
            ModelOp::MaybeWritten(key, seq) => {
                model.maybe_written(key, seq);
                reference.maybe_written(key, seq);
            }
            ModelOp::Read(key, got) => {
                let settled = model.settled(key);
                // The lane-local key is the key number here.
                let ours = judge(&mut model, key, key, got.map(Some));
                // The reference knew every value's key from its history:
                // a value naming another key was never written here.
                let theirs = match got {
                    Some((_, named)) if named != key => {
                        reference.read(key, Some(u64::MAX));
                        ReadCheck::Wrong
                    }
                    _ => reference.read(key, got.map(|(seq, _)| seq)),
                };
                if settled == got.map(|(seq, _)| seq) && ours != ReadCheck::Fresh {
                    let named_here = got.is_none_or(|(_, named)| named == key);
                    if named_here {
                        return Err(format!("op {n} {op:?}: the settled value is {ours:?}"));
                    }
                }
                if ours != theirs {
                    return Err(format!("op {n} {op:?}: {ours:?}, reference {theirs:?}"));
                }
            }
        }
    }
    Ok(())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    #[test]
    fn bounded_model_judges_reads_like_the_full_history(
        ops in model_ops(),
        presized in proptest::prelude::any::<bool>(),
    ) {
        let model = if presized { LaneModel::with_keys(3) } else { LaneModel::default() };
        let verdict = agrees_with_the_reference(&ops, model);
        proptest::prop_assert!(verdict.is_ok(), "{}", verdict.unwrap_err());
    }
}

#[test]
fn values_carry_their_tag() {
    let v = make_value(7, 12, 42, 100);
    assert_eq!(v.len(), 100);
    assert_eq!(parse_value(7, &v), Some((42, 12)));
    assert_eq!(parse_value(8, &v), None);
    assert_eq!(parse_value(7, b"garbage"), None);
    assert_eq!(parse_value(7, b""), None);
}

/// `parse_value` with a `splitn` iterator: the reference.
fn reference_parse_value(client: u32, value: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(value.get(..value.len().min(32))?).ok()?;
    let mut parts = text.splitn(4, ':');
    let owner: u32 = parts.next()?.parse().ok()?;
    let seq: u64 = parts.next()?.parse().ok()?;
    let key: u64 = parts.next()?.parse().ok()?;
    parts.next()?;
    (owner == client).then_some((seq, key))
}

proptest::proptest! {
    #[test]
    fn parse_value_reads_what_it_always_read(
        client in 0u32..4,
        owner in proptest::prelude::any::<u64>(),
        seq in proptest::prelude::any::<u64>(),
        texture in "[0-9:+xé-]{0,40}",
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        shape in 0u8..4,
    ) {
        let value = match shape {
            0 => format!("{}:{seq}:{}:{texture}", owner % 5, owner % 7).into_bytes(),
            1 => format!("{owner}:{seq}{texture}").into_bytes(),
            2 => texture.into_bytes(),
            _ => bytes,
        };
        proptest::prop_assert_eq!(
            parse_value(client, &value),
            reference_parse_value(client, &value),
            "{:?}", String::from_utf8_lossy(&value)
        );
    }
}

#[test]
fn rng_is_deterministic_and_in_range() {
    let mut a = Rng::new(5);
    let mut b = Rng::new(5);
    for _ in 0..1000 {
        let x = a.below(10);
        assert_eq!(x, b.below(10));
        assert!(x < 10);
    }
    assert_eq!(a.below(0), 0);
}
