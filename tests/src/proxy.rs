//! [`Proxy`]: a TCP fault relay on `127.0.0.1:0` in front of one target,
//! able to delay, blackhole or cut the connections through it, per role.
//!
//! Put it in the balancer's replica list instead of the replica's address:
//! the balancer's health checks, admin and routed requests go through it,
//! and so do the followers' streams from this replica when it leads (the
//! leader address followers use is the one the balancer was given). The
//! proxy reads each connection's first frame (the `Hello`) to learn its role,
//! so a test can partition a leader from its followers (`Role::Replica`) but
//! not from the balancer (`Role::Balancer`), or the reverse.
//!
//! A blackhole stops forwarding without closing anything: bytes wait in the
//! socket buffers and flow again on [`Proxy::heal`], as over a partition
//! shorter than TCP's timeouts; new connections are accepted but not
//! connected through until then. [`Proxy::cut`] closes every connection now.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use semikv_protocol::{Message, MessageCodec, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::codec::Decoder;

use crate::client::IO_TIMEOUT;

/// Largest first frame the proxy buffers to learn a connection's role;
/// anything bigger is forwarded as a client connection.
const MAX_HELLO: usize = 4096;

/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Size of one forwarding read.
const CHUNK: usize = 16 * 1024;

/// What the proxy does to each role's connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Faults {
    /// Per role (client, balancer, replica): stop forwarding.
    blackholed: [bool; 3],
    /// Added before forwarding each chunk, both directions.
    delay: Duration,
    /// Per role (client, balancer, replica): added to `delay`.
    role_delay: [Duration; 3],
    /// Replica ids whose replica-role connections (a follower's stream from
    /// this proxy's leader) are held as a blackhole holds them.
    held: Vec<u32>,
    /// Bumped by [`Proxy::cut`]: connections older than it close.
    cuts: u64,
}

fn slot(role: Role) -> usize {
    match role {
        Role::Client => 0,
        Role::Balancer => 1,
        Role::Replica => 2,
    }
}

/// A running relay. Dropping it closes the listener and every connection.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    faults: watch::Sender<Faults>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and relays every connection to `target`.
    ///
    /// # Errors
    /// Binding failed.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (faults, rx) = watch::channel(Faults::default());
        let accept = tokio::spawn(accept_loop(listener, target, rx));
        Ok(Proxy {
            addr,
            target,
            faults,
            accept,
        })
    }

    /// Where it listens: give this to the balancer.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it relays to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Stops forwarding `roles`' connections, both directions, keeping them
    /// open (see the module doc).
    pub fn blackhole(&self, roles: &[Role]) {
        self.faults.send_modify(|f| {
            for &r in roles {
                f.blackholed[slot(r)] = true;
            }
        });
    }

    /// Stops forwarding every connection.
    pub fn blackhole_all(&self) {
        self.blackhole(&[Role::Client, Role::Balancer, Role::Replica]);
    }

    /// Forwards every role's connections again.
    pub fn heal(&self) {
        self.faults.send_modify(|f| f.blackholed = [false; 3]);
    }

    /// Delays every forwarded chunk by `delay` (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        self.faults.send_modify(|f| f.delay = delay);
    }

    /// Delays every forwarded chunk of `roles`' connections by `delay`, on
    /// top of [`Proxy::set_delay`]'s (zero: none): e.g. only the followers'
    /// streams from a leader, not the balancer's requests.
    pub fn set_role_delay(&self, roles: &[Role], delay: Duration) {
        self.faults.send_modify(|f| {
            for &r in roles {
                f.role_delay[slot(r)] = delay;
            }
        });
    }

    /// Stops forwarding the replica-role connections of replica `id` (as
    /// its `Hello` names it), keeping them open: when this proxy fronts the
    /// leader, that one follower's stream stalls while the others flow.
    pub fn hold_replica(&self, id: u32) {
        self.faults.send_modify(|f| f.held.push(id));
    }

    /// Forwards every replica's connections again (see
    /// [`Proxy::hold_replica`]).
    pub fn release_replicas(&self) {
        self.faults.send_modify(|f| f.held.clear());
    }

    /// Closes every connection through the proxy now; new ones are relayed
    /// as usual.
    pub fn cut(&self) {
        self.faults.send_modify(|f| f.cuts += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The accept task owns the connections' JoinSet: aborting it drops
        // them all.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, faults: watch::Receiver<Faults>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, _)) => {
                        conns.spawn(relay(stream, target, faults.clone()));
                    }
                    // Out of descriptors, say: back off rather than spin.
                    Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
                }
            }
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One relayed connection: learns its role, connects through (once its role
/// is not blackholed), then pumps both ways until either side closes or the
/// proxy cuts it.
async fn relay(mut inbound: TcpStream, target: SocketAddr, mut faults: watch::Receiver<Faults>) {
    let born = faults.borrow().cuts;
    let mut cut = faults.clone();
    let work = async {
        let (first, role, node) = first_frame(&mut inbound).await?;
        let who = Who { role, node };
        wait_open(&mut faults, who).await?;
        let outbound = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(target))
            .await
            .ok()?
            .ok()?;
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let (in_read, in_write) = inbound.into_split();
        let (out_read, mut out_write) = outbound.into_split();
        out_write.write_all(&first).await.ok()?;
        tokio::join!(
            pump(in_read, out_write, who, faults.clone()),
            pump(out_read, in_write, who, faults.clone()),
        );
        Some(())
    };
    tokio::select! {
        _ = work => {}
        _ = cut.wait_for(|f| f.cuts != born) => {}
    }
}

/// Whose connection one relayed connection is, as its first frame says.
#[derive(Debug, Clone, Copy)]
struct Who {
    role: Role,
    /// The replica id a `Hello` names, if any.
    node: Option<u32>,
}

/// Reads until the first frame is complete and returns the bytes read, the
/// role its `Hello` declares (plain, proving the cluster secret or logging
/// in; `Client` when it is not a readable Hello) and the replica id it
/// names.
async fn first_frame(inbound: &mut TcpStream) -> Option<(BytesMut, Role, Option<u32>)> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if buf.len() >= 8 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > MAX_HELLO {
                return Some((buf, Role::Client, None));
            }
            if buf.len() >= 8 + len {
                let hello = match MessageCodec::default().decode(&mut buf.clone()) {
                    Ok(Some(Message::Hello(h))) => Some(h),
                    Ok(Some(Message::SecureHello(h))) => Some(h.hello),
                    Ok(Some(Message::HelloAuth(h))) => Some(h.hello),
                    _ => None,
                };
                let role = hello.as_ref().map_or(Role::Client, |h| h.role);
                let node = hello.and_then(|h| h.node).map(|id| id.0);
                return Some((buf, role, node));
            }
        }
        if inbound.read_buf(&mut buf).await.ok()? == 0 {
            // Closed before a whole frame: relay what there is as a client.
            return if buf.is_empty() {
                None
            } else {
                Some((buf, Role::Client, None))
            };
        }
    }
}

/// Waits while `who` is blackholed or held. `None` if the proxy is gone.
async fn wait_open(faults: &mut watch::Receiver<Faults>, who: Who) -> Option<()> {
    faults
        .wait_for(|f| {
            let held = who.role == Role::Replica && who.node.is_some_and(|n| f.held.contains(&n));
            !f.blackholed[slot(who.role)] && !held
        })
        .await
        .ok()
        .map(|_| ())
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    who: Who,
    mut faults: watch::Receiver<Faults>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        if wait_open(&mut faults, who).await.is_none() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Read before the blackhole began: hold it until the heal.
        if wait_open(&mut faults, who).await.is_none() {
            return;
        }
        let delay = {
            let f = faults.borrow();
            f.delay + f.role_delay[slot(who.role)]
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::encode;
    use semikv_protocol::Hello;

    /// An echo server: every byte comes back.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn hello_conn(addr: SocketAddr, role: Role) -> (TcpStream, usize) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let hello = encode(&Message::Hello(Hello::new(role, None))).unwrap();
        s.write_all(&hello).await.unwrap();
        (s, hello.len())
    }

    async fn read_n(s: &mut TcpStream, n: usize, wait: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; n];
        match tokio::time::timeout(wait, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf),
            _ => None,
        }
    }

    #[tokio::test]
    async fn relays_blackholes_per_role_heals_and_cuts() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let (mut client, n) = hello_conn(proxy.addr(), Role::Client).await;
        let (mut replica, m) = hello_conn(proxy.addr(), Role::Replica).await;
        assert!(read_n(&mut client, n, IO_TIMEOUT).await.is_some());
        assert!(read_n(&mut replica, m, IO_TIMEOUT).await.is_some());

        proxy.blackhole(&[Role::Replica]);
        client.write_all(b"ping").await.unwrap();
        replica.write_all(b"held").await.unwrap();
        assert_eq!(
            read_n(&mut client, 4, IO_TIMEOUT).await.as_deref(),
            Some(&b"ping"[..])
        );
        // Nothing passes while blackholed (a short look; the heal below is
        // what proves the bytes were held, not dropped).
        assert_eq!(
            read_n(&mut replica, 4, Duration::from_millis(200)).await,
            None
        );
        proxy.heal();
        assert_eq!(
            read_n(&mut replica, 4, IO_TIMEOUT).await.as_deref(),
            Some(&b"held"[..])
        );

        proxy.cut();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(IO_TIMEOUT, client.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        // New connections still work after a cut.
        let (mut again, n) = hello_conn(proxy.addr(), Role::Balancer).await;
        assert!(read_n(&mut again, n, IO_TIMEOUT).await.is_some());
    }

    #[tokio::test]
    async fn one_replicas_connections_are_held_while_the_others_flow() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        proxy.hold_replica(7);
        let addr = proxy.addr();
        let connect = |id| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let hello = encode(&Message::Hello(Hello::new(
                Role::Replica,
                Some(semikv_protocol::ReplicaId(id)),
            )))
            .unwrap();
            s.write_all(&hello).await.unwrap();
            (s, hello.len())
        };
        let (mut held, n) = connect(7).await;
        let (mut free, m) = connect(8).await;
        assert!(read_n(&mut free, m, IO_TIMEOUT).await.is_some());
        assert_eq!(read_n(&mut held, n, Duration::from_millis(200)).await, None);
        proxy.release_replicas();
        assert!(read_n(&mut held, n, IO_TIMEOUT).await.is_some());
    }

    #[tokio::test]
    async fn a_connection_made_during_a_blackhole_waits_for_the_heal() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        proxy.blackhole_all();
        proxy.set_delay(Duration::from_millis(1));
        let (mut c, n) = hello_conn(proxy.addr(), Role::Balancer).await;
        assert_eq!(read_n(&mut c, n, Duration::from_millis(200)).await, None);
        proxy.heal();
        assert!(read_n(&mut c, n, IO_TIMEOUT).await.is_some());
    }
}
