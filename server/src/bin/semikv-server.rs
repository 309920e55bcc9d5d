//! `semikv-server` (being built; see issue #3).

fn main() {}
