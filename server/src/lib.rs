//! semikv replica server.

pub mod storage;
