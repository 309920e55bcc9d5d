//! [`RelayedBalancer`]: a balancer that knows the replicas only through
//! [`Proxy`] relays of its own, one per replica. Followers reach a leader
//! at the address the balancer gave them, so they go through the leader's
//! relay too: a test can cut a replica off from this balancer, from its
//! followers, or both, per role (see [`crate::proxy`]).
//!
//! Two of them over one [`Cluster`](crate::Cluster) make two coordinators
//! that can each lose a different replica.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use semikv_protocol::Role;

use crate::client::Client;
use crate::node::{start_balancer, Balancer};
use crate::proxy::Proxy;

/// A balancer and the relays it knows the replicas by. Dropping it kills
/// the balancer, then closes the relays.
#[derive(Debug)]
pub struct RelayedBalancer {
    // Declared first: dropped before the relays.
    /// The balancer.
    pub balancer: Balancer,
    /// One relay per replica, in the order the replicas were given.
    pub proxies: Vec<Proxy>,
}

impl RelayedBalancer {
    /// Starts a relay in front of each of `replicas`, then a balancer (its
    /// files in `dir`, with `args`) that knows them by their relays.
    ///
    /// # Errors
    /// A relay could not bind, or the balancer failed to start.
    pub async fn start(
        dir: &Path,
        replicas: &[SocketAddr],
        args: &[&str],
    ) -> anyhow::Result<RelayedBalancer> {
        let mut proxies = Vec::with_capacity(replicas.len());
        for &addr in replicas {
            let proxy = Proxy::start(addr)
                .await
                .with_context(|| format!("starting a relay to {addr}"))?;
            proxies.push(proxy);
        }
        let addrs: Vec<SocketAddr> = proxies.iter().map(Proxy::addr).collect();
        let balancer = start_balancer(dir, &addrs, args).await?;
        Ok(RelayedBalancer { balancer, proxies })
    }

    /// The balancer's address.
    pub fn addr(&self) -> SocketAddr {
        self.balancer.addr
    }

    /// The index of the replica whose relay has the address `addr`, as the
    /// balancer names replicas.
    pub fn index_of(&self, addr: &str) -> Option<usize> {
        self.proxies
            .iter()
            .position(|p| p.addr().to_string() == addr)
    }

    /// The index of the replica the balancer routes writes to, `None` while
    /// it knows no leader.
    ///
    /// # Errors
    /// The balancer did not answer, or it names a leader that is not one of
    /// its relays.
    pub async fn leader(&self) -> anyhow::Result<Option<usize>> {
        let mut c = Client::connect(self.addr(), Role::Client).await?;
        match c.cluster_status().await?.leader {
            None => Ok(None),
            Some(addr) => self
                .index_of(&addr)
                .map(Some)
                .with_context(|| format!("the balancer's leader {addr} is not a relay of it")),
        }
    }

    /// Forwards every role's connections through every relay again.
    pub fn heal_all(&self) {
        for p in &self.proxies {
            p.heal();
        }
    }

    /// The balancer's stderr tail under a `==== name (address)` heading,
    /// for failure messages.
    pub fn logs(&self, name: &str) -> String {
        format!(
            "==== {name} ({})\n{}\n",
            self.balancer.addr,
            self.balancer.proc.stderr_tail()
        )
    }
}
