//! How a process reaches the network: the operating system's TCP through
//! tokio, or (feature `sim`) turmoil's simulated TCP, chosen at run time by
//! the [`Net`] a process is given. Everything above it sees one [`Stream`]
//! and one [`Listener`], so the product runs unmodified in a deterministic
//! simulation.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::transport::Stream;

/// The network a process binds and connects on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Net {
    /// The operating system's TCP (tokio).
    #[default]
    Tokio,
    /// turmoil's simulated network: only inside a `turmoil::Sim` host,
    /// where addresses are `host:port` of the simulation's hosts.
    #[cfg(feature = "sim")]
    Turmoil,
}

impl Net {
    /// Binds a listener on `addr`.
    ///
    /// # Errors
    /// As the network's bind (address in use, not an address here).
    pub async fn bind(self, addr: &str) -> io::Result<Listener> {
        match self {
            Net::Tokio => TcpListener::bind(addr).await.map(Listener::Tokio),
            #[cfg(feature = "sim")]
            Net::Turmoil => turmoil::net::TcpListener::bind(addr)
                .await
                .map(Listener::Turmoil),
        }
    }

    /// Connects to `addr` (`host:port`), with Nagle's algorithm off:
    /// requests are small and latency matters more than packet count.
    ///
    /// # Errors
    /// As the network's connect (refused, unreachable, no such host).
    pub async fn connect(self, addr: &str) -> io::Result<Stream> {
        match self {
            Net::Tokio => {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                let _ = stream.set_nodelay(true);
                Ok(Stream::Plain(stream))
            }
            #[cfg(feature = "sim")]
            Net::Turmoil => turmoil::net::TcpStream::connect(addr)
                .await
                .map(Stream::Sim),
        }
    }
}

/// A bound listener of either network.
pub enum Listener {
    /// The operating system's.
    Tokio(TcpListener),
    /// turmoil's.
    #[cfg(feature = "sim")]
    Turmoil(turmoil::net::TcpListener),
}

impl Listener {
    /// The next connection and its peer's address, Nagle's algorithm off.
    ///
    /// # Errors
    /// As the network's accept (usually out of file descriptors).
    pub async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        match self {
            Listener::Tokio(listener) => {
                let (stream, peer) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok((Stream::Plain(stream), peer))
            }
            #[cfg(feature = "sim")]
            Listener::Turmoil(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok((Stream::Sim(stream), peer))
            }
        }
    }

    /// The address it is bound to (under turmoil, `0.0.0.0:port`: hosts
    /// bind the unspecified address, so a process there must be told the
    /// address others reach it at).
    ///
    /// # Errors
    /// As the network's `local_addr`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listener::Tokio(listener) => listener.local_addr(),
            #[cfg(feature = "sim")]
            Listener::Turmoil(listener) => listener.local_addr(),
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Listener {
        Listener::Tokio(listener)
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Listener::Tokio(_) => "tokio",
            #[cfg(feature = "sim")]
            Listener::Turmoil(_) => "turmoil",
        };
        f.debug_struct("Listener")
            .field("net", &kind)
            .field("addr", &self.local_addr().ok())
            .finish()
    }
}

#[cfg(all(test, feature = "sim"))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use futures::{SinkExt, StreamExt};
    use tokio_util::codec::Framed;

    use super::*;
    use crate::{Hello, Message, MessageCodec, Role};

    /// Frames cross the simulated network both ways, through the same
    /// `Stream` and halves as over TCP, and the peer's address is the
    /// simulated host's.
    #[test]
    fn frames_cross_the_simulated_network() {
        let mut sim = turmoil::Builder::new().rng_seed(7).build();
        sim.host("server", || async {
            let listener = Net::Turmoil.bind("0.0.0.0:9000").await?;
            let (stream, peer) = listener.accept().await?;
            assert_eq!(peer.ip(), turmoil::lookup("client"));
            let (read, write) = stream.into_split();
            let mut frames = tokio_util::codec::FramedRead::new(read, MessageCodec::default());
            let mut out = tokio_util::codec::FramedWrite::new(write, MessageCodec::default());
            while let Some(frame) = frames.next().await {
                out.send(frame?).await?;
            }
            Ok(())
        });
        sim.client("client", async {
            let stream = Net::Turmoil.connect("server:9000").await?;
            let mut conn = Framed::new(stream, MessageCodec::default());
            let hello = Message::Hello(Hello::new(Role::Client, None));
            conn.send(hello.clone()).await?;
            assert_eq!(conn.next().await.unwrap()?, hello);
            Ok(())
        });
        sim.run().unwrap();
    }
}
