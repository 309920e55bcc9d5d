//! The in-memory key-value map that committed entries are applied to.

use std::collections::HashMap;

use bytes::Bytes;
use semikv_protocol::WriteOp;

/// The replica's data: a map from key to value.
///
/// Applying a [`WriteOp`] is idempotent, so replaying entries a snapshot
/// already covers gives the same map.
#[derive(Clone, Default, Debug)]
pub struct Store {
    map: HashMap<Bytes, Bytes>,
}

impl Store {
    /// The value stored under `key`, if any. Cheap: `Bytes` is reference
    /// counted.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.map.get(key).cloned()
    }

    /// Applies one write: `Set` replaces, `Delete` removes (absent is fine),
    /// `Noop` changes nothing.
    pub fn apply(&mut self, op: &WriteOp) {
        match op {
            WriteOp::Set { key, value } => {
                self.map.insert(key.clone(), value.clone());
            }
            WriteOp::Delete { key } => {
                self.map.remove(key);
            }
            WriteOp::Noop => {}
        }
    }

    /// Sets `key` to `value` directly (used when loading a snapshot).
    pub fn insert(&mut self, key: Bytes, value: Bytes) {
        self.map.insert(key, value);
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every key and value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.map.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_delete_noop() {
        let mut s = Store::default();
        let k = Bytes::from_static(b"k");
        s.apply(&WriteOp::Set {
            key: k.clone(),
            value: Bytes::from_static(b"v"),
        });
        assert_eq!(s.get(b"k"), Some(Bytes::from_static(b"v")));
        s.apply(&WriteOp::Noop);
        assert_eq!(s.len(), 1);
        s.apply(&WriteOp::Delete { key: k.clone() });
        s.apply(&WriteOp::Delete { key: k });
        assert!(s.is_empty());
        assert_eq!(s.get(b"k"), None);
    }
}
