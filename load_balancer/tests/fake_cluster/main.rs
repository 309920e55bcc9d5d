//! The balancer against in-process fake replicas on 127.0.0.1:0: start-up
//! election and adoption, routing, failover, indeterminate writes, bad input,
//! and the cluster status. The election's rules are tested without sockets
//! in `semikv_lb::group::election`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod election;
mod input;
mod levels;
mod links;
mod reads;
mod resp;
mod routing;
mod support;
mod writes;
