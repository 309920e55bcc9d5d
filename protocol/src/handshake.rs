//! The handshake, the same for every role. Without a cluster secret: send a
//! `Hello`, then the peer's first message is a `Welcome` or a `Reject`. With
//! one, the challenge-response of [`crate::auth`] comes between.

use futures::{Sink, SinkExt, Stream, StreamExt};

use crate::auth::{ClusterSecret, Side, Transcript};
use crate::{
    Challenge, Hello, Message, Nonce, Proof, ProtocolError, Role, SecureHello, Welcome, WireError,
};

/// Why a handshake did not end in a `Welcome`.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer refused us, saying why.
    #[error("handshake refused: {0}")]
    Rejected(WireError),
    /// The peer answered with another message.
    #[error("expected Welcome, got {0}")]
    Unexpected(&'static str),
    /// Writing the `Hello`, or reading or decoding the answer, failed.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The peer closed the connection before answering.
    #[error("connection closed during the handshake")]
    Closed,
    /// The peer's proof of the cluster secret was wrong: it holds another
    /// secret (or is not who it claims).
    #[error("the peer's proof of the cluster secret is wrong: its secret differs from ours")]
    PeerNotProved,
    /// No randomness for a nonce.
    #[error("drawing a nonce: {0}")]
    Random(std::io::Error),
}

/// What the peer's first answer to a `Hello` means: its `Welcome`, or why
/// there is none.
///
/// # Errors
/// [`HandshakeError`] for anything but a `Welcome`.
pub fn welcome(answer: Option<Result<Message, ProtocolError>>) -> Result<Welcome, HandshakeError> {
    match answer {
        Some(Ok(Message::Welcome(welcome))) => Ok(welcome),
        Some(Ok(Message::Reject(error))) => Err(HandshakeError::Rejected(error)),
        Some(Ok(other)) => Err(HandshakeError::Unexpected(other.name())),
        Some(Err(e)) => Err(HandshakeError::Protocol(e)),
        None => Err(HandshakeError::Closed),
    }
}

/// Says `hello` on `conn` and reads the answer. Unbounded in time: callers
/// wrap it in their own timeout.
///
/// # Errors
/// [`HandshakeError`] when the peer did not welcome us.
pub async fn hello<C>(conn: &mut C, hello: Hello) -> Result<Welcome, HandshakeError>
where
    C: Sink<Message, Error = ProtocolError> + Stream<Item = Result<Message, ProtocolError>> + Unpin,
{
    conn.send(Message::Hello(hello)).await?;
    welcome(conn.next().await)
}

/// Says `hello` on `conn`, proving `secret` when there is one (and checking
/// the peer's proof of it first), and reads the answer. Unbounded in time:
/// callers wrap it in their own timeout.
///
/// # Errors
/// [`HandshakeError`] when the peer did not welcome us or did not prove
/// the secret.
pub async fn hello_proving<C>(
    conn: &mut C,
    hello: Hello,
    secret: Option<&ClusterSecret>,
) -> Result<Welcome, HandshakeError>
where
    C: Sink<Message, Error = ProtocolError> + Stream<Item = Result<Message, ProtocolError>> + Unpin,
{
    let Some(secret) = secret else {
        return self::hello(conn, hello).await;
    };
    let mine = Nonce::fresh().map_err(HandshakeError::Random)?;
    conn.send(Message::SecureHello(SecureHello {
        hello: hello.clone(),
        nonce: mine,
    }))
    .await?;
    let challenge = match conn.next().await {
        Some(Ok(Message::Challenge(challenge))) => challenge,
        Some(Ok(Message::Reject(error))) => return Err(HandshakeError::Rejected(error)),
        Some(Ok(other)) => return Err(HandshakeError::Unexpected(other.name())),
        Some(Err(e)) => return Err(HandshakeError::Protocol(e)),
        None => return Err(HandshakeError::Closed),
    };
    let transcript = Transcript::new(&hello, mine, challenge.nonce);
    if !secret.verify(Side::Accepting, &transcript, &challenge.mac) {
        return Err(HandshakeError::PeerNotProved);
    }
    let mac = secret.prove(Side::Connecting, &transcript);
    conn.send(Message::Proof(Proof { mac })).await?;
    welcome(conn.next().await)
}

/// A connection's handshake as the accepting side saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// What the peer declared.
    pub hello: Hello,
    /// Whether it proved the cluster secret.
    pub proved: bool,
}

/// The accepting side of the handshake, from the connection's `first`
/// message on: checks the `Hello` (plain or secure), runs the
/// challenge-response when the peer offers it, and requires it of the
/// internal roles (balancer, replica) when this side has a `secret`. Does
/// not send the `Welcome`: the caller may still refuse (a full listener, a
/// role it does not serve). Unbounded in time: callers wrap it in their
/// own timeout.
///
/// # Errors
/// The [`WireError`] to reject the connection with (the caller sends it;
/// `None` when the peer closed or the transport failed without one).
pub async fn accept<C>(
    conn: &mut C,
    first: Message,
    secret: Option<&ClusterSecret>,
) -> Result<Accepted, Option<WireError>>
where
    C: Sink<Message, Error = ProtocolError> + Stream<Item = Result<Message, ProtocolError>> + Unpin,
{
    let offered = match first {
        Message::Hello(hello) => {
            hello.check().map_err(Some)?;
            if secret.is_some() && hello.role != Role::Client {
                return Err(Some(WireError::AuthFailed {
                    reason: format!(
                        "the {} role needs the cluster secret (--cluster-secret-file), \
                         and this peer did not offer a proof of it",
                        hello.role
                    ),
                }));
            }
            return Ok(Accepted {
                hello,
                proved: false,
            });
        }
        Message::SecureHello(offered) => offered,
        _ => return Err(Some(WireError::HandshakeRequired)),
    };
    offered.hello.check().map_err(Some)?;
    let Some(secret) = secret else {
        return Err(Some(WireError::AuthFailed {
            reason: "this process has no cluster secret; start it with the same \
                     --cluster-secret-file as its peers"
                .into(),
        }));
    };
    let mine = Nonce::fresh().map_err(|_| None)?;
    let transcript = Transcript::new(&offered.hello, offered.nonce, mine);
    let mac = secret.prove(Side::Accepting, &transcript);
    conn.send(Message::Challenge(Challenge { nonce: mine, mac }))
        .await
        .map_err(|e| e.to_wire())?;
    match conn.next().await {
        Some(Ok(Message::Proof(proof)))
            if secret.verify(Side::Connecting, &transcript, &proof.mac) =>
        {
            Ok(Accepted {
                hello: offered.hello,
                proved: true,
            })
        }
        Some(Ok(Message::Proof(_))) => Err(Some(WireError::AuthFailed {
            reason: "wrong proof of the cluster secret: this peer's secret differs \
                     from ours"
                .into(),
        })),
        Some(Ok(other)) => Err(Some(WireError::Unexpected {
            what: other.name().to_string(),
        })),
        Some(Err(e)) => Err(e.to_wire()),
        None => Err(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MessageCodec, ReplicaId, PROTOCOL_VERSION};
    use tokio_util::codec::Framed;

    type Pipe = Framed<tokio::io::DuplexStream, MessageCodec>;

    fn pipe() -> (Pipe, Pipe) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (
            Framed::new(a, MessageCodec::default()),
            Framed::new(b, MessageCodec::default()),
        )
    }

    fn secret(fill: u8) -> ClusterSecret {
        ClusterSecret::from_bytes(&[fill; 32]).unwrap()
    }

    /// Runs both sides; the acceptor welcomes what it accepts.
    async fn run(
        hello: Hello,
        connecting: Option<ClusterSecret>,
        accepting: Option<ClusterSecret>,
    ) -> (
        Result<Welcome, HandshakeError>,
        Result<Accepted, Option<WireError>>,
    ) {
        let (mut c, mut a) = pipe();
        let acceptor = tokio::spawn(async move {
            let Some(Ok(first)) = a.next().await else {
                return Err(None);
            };
            let accepted = accept(&mut a, first, accepting.as_ref()).await;
            let answer = match &accepted {
                Ok(_) => Message::Welcome(Welcome {
                    version: PROTOCOL_VERSION,
                    node: None,
                }),
                Err(Some(e)) => Message::Reject(e.clone()),
                Err(None) => return accepted,
            };
            let _ = a.send(answer).await;
            accepted
        });
        let connected = hello_proving(&mut c, hello, connecting.as_ref()).await;
        drop(c);
        (connected, acceptor.await.unwrap())
    }

    #[tokio::test]
    async fn a_shared_secret_is_proved_both_ways() {
        let hello = Hello::new(Role::Replica, Some(ReplicaId(2)));
        let (c, a) = run(hello.clone(), Some(secret(1)), Some(secret(1))).await;
        assert!(c.is_ok(), "{c:?}");
        assert_eq!(
            a.unwrap(),
            Accepted {
                hello,
                proved: true
            }
        );
    }

    #[tokio::test]
    async fn a_different_secret_fails_on_both_sides() {
        let hello = Hello::new(Role::Balancer, None);
        let (c, a) = run(hello, Some(secret(1)), Some(secret(2))).await;
        // The connecting side checks first and never proves anything.
        assert!(matches!(c, Err(HandshakeError::PeerNotProved)), "{c:?}");
        assert!(a.is_err(), "{a:?}");
    }

    #[tokio::test]
    async fn internal_roles_without_a_proof_are_refused_by_a_side_with_a_secret() {
        for role in [Role::Balancer, Role::Replica] {
            let (c, a) = run(Hello::new(role, None), None, Some(secret(1))).await;
            assert!(
                matches!(
                    c,
                    Err(HandshakeError::Rejected(WireError::AuthFailed { .. }))
                ),
                "{c:?}"
            );
            assert!(matches!(a, Err(Some(WireError::AuthFailed { .. }))));
        }
        // A client proves nothing, and is the caller's to admit or not.
        let (c, a) = run(Hello::new(Role::Client, None), None, Some(secret(1))).await;
        assert!(c.is_ok() && !a.unwrap().proved);
        // Without a secret anywhere, as before.
        let (c, a) = run(Hello::new(Role::Balancer, None), None, None).await;
        assert!(c.is_ok() && !a.unwrap().proved);
    }

    #[tokio::test]
    async fn a_proof_offered_to_a_side_without_a_secret_is_a_mismatch() {
        let (c, _) = run(Hello::new(Role::Balancer, None), Some(secret(1)), None).await;
        let Err(HandshakeError::Rejected(WireError::AuthFailed { reason })) = c else {
            panic!("{c:?}");
        };
        assert!(reason.contains("no cluster secret"), "{reason}");
    }

    #[tokio::test]
    async fn a_recorded_proof_does_not_pass_a_new_challenge() {
        let s = secret(1);
        let hello = Hello::new(Role::Balancer, None);
        // A handshake recorded on the wire: its SecureHello and Proof.
        let (mut c, mut a) = pipe();
        let recorder = tokio::spawn({
            let s = s.clone();
            async move {
                let Some(Ok(first)) = a.next().await else {
                    panic!("no hello")
                };
                let Message::SecureHello(offered) = first.clone() else {
                    panic!("{first:?}")
                };
                let mine = Nonce::fresh().unwrap();
                let t = Transcript::new(&offered.hello, offered.nonce, mine);
                let mac = s.prove(Side::Accepting, &t);
                a.send(Message::Challenge(Challenge { nonce: mine, mac }))
                    .await
                    .unwrap();
                let Some(Ok(proof)) = a.next().await else {
                    panic!("no proof")
                };
                a.send(Message::Reject(WireError::HandshakeRequired))
                    .await
                    .unwrap();
                (first, proof)
            }
        });
        let _ = hello_proving(&mut c, hello, Some(&s)).await;
        let (first, proof) = recorder.await.unwrap();
        // Replayed to a real acceptor: its fresh nonce makes the proof
        // worthless.
        let (mut c, mut a) = pipe();
        let acceptor = tokio::spawn(async move {
            let Some(Ok(first)) = a.next().await else {
                panic!("no hello")
            };
            accept(&mut a, first, Some(&s)).await
        });
        c.send(first).await.unwrap();
        let Some(Ok(Message::Challenge(_))) = c.next().await else {
            panic!("no challenge")
        };
        c.send(proof).await.unwrap();
        let refused = acceptor.await.unwrap();
        assert!(
            matches!(refused, Err(Some(WireError::AuthFailed { .. }))),
            "{refused:?}"
        );
    }

    #[test]
    fn only_a_welcome_ends_a_handshake_well() {
        let welcome_msg = Welcome {
            version: PROTOCOL_VERSION,
            node: None,
        };
        assert!(matches!(
            welcome(Some(Ok(Message::Welcome(welcome_msg)))),
            Ok(Welcome {
                version: PROTOCOL_VERSION,
                node: None
            })
        ));
        let refused = welcome(Some(Ok(Message::Reject(WireError::HandshakeRequired))));
        assert!(matches!(
            refused,
            Err(HandshakeError::Rejected(WireError::HandshakeRequired))
        ));
        let other = welcome(Some(Ok(Message::Hello(Hello::new(
            crate::Role::Client,
            None,
        )))));
        assert!(
            matches!(other, Err(HandshakeError::Unexpected("Hello"))),
            "{other:?}"
        );
        assert!(matches!(welcome(None), Err(HandshakeError::Closed)));
    }
}
