//! The connecting side of the handshake, the same for every role: send a
//! `Hello`, then the peer's first message is a `Welcome` or a `Reject`.

use futures::{Sink, SinkExt, Stream, StreamExt};

use crate::{Hello, Message, ProtocolError, Welcome, WireError};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PROTOCOL_VERSION;

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
