//! The RESP door's stall rule (`Config::frame_timeout`): a command must
//! arrive whole within the timeout of its first bytes, however slowly it
//! trickles in, while a client that keeps finishing commands is never taken
//! for a staller, however long its pipeline runs.

use crate::support::*;

/// The frame timeout these tests give the balancer.
const STALL: Duration = Duration::from_millis(300);

/// A balancer in front of `a` with a RESP door; returns it and the door's
/// address.
async fn with_resp_door(a: &Fake) -> (Balancer, SocketAddr) {
    let mut cfg = config(&[a]);
    cfg.frame_timeout = STALL;
    let semikv = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, resp_addr) = (semikv.local_addr().unwrap(), resp.local_addr().unwrap());
    let doors = semikv_lb::Doors {
        semikv: semikv.into(),
        resp: Some(resp.into()),
        http: None,
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(semikv_lb::run_doors(cfg, doors, shutdown.clone()));
    let lb = Balancer {
        addr,
        shutdown,
        task,
    };
    (lb, resp_addr)
}

async fn ping(addr: SocketAddr) {
    let mut c = timeout(T, TcpStream::connect(addr)).await.unwrap().unwrap();
    c.write_all(b"PING\r\n").await.unwrap();
    let mut got = [0u8; 7];
    timeout(T, c.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, b"+PONG\r\n");
}

#[tokio::test]
async fn a_command_trickling_in_a_byte_at_a_time_is_closed_after_the_frame_timeout() {
    let a = Fake::start(1, NodeRole::Leader, 1, 0).await;
    let (lb, resp) = with_resp_door(&a).await;
    let stream = timeout(T, TcpStream::connect(resp)).await.unwrap().unwrap();
    let (mut read, mut write) = stream.into_split();
    // ECHO of 200 bytes, one byte every quarter of the timeout: each byte
    // comes well within the timeout, the whole command (15 s) far past it.
    let trickle = tokio::spawn(async move {
        write.write_all(b"*2\r\n$4\r\nECHO\r\n$200\r\n").await?;
        for _ in 0..200 {
            tokio::time::sleep(STALL / 4).await;
            write.write_all(b"x").await?;
        }
        write.write_all(b"\r\n").await
    });
    let started = Instant::now();
    let mut got = Vec::new();
    let closed = timeout(STALL * 10, read.read_to_end(&mut got)).await;
    assert!(
        matches!(closed, Ok(Ok(_))),
        "a command trickling in kept its connection for {:?}: {closed:?}",
        started.elapsed()
    );
    assert!(got.is_empty(), "{}", got.escape_ascii());
    trickle.abort();
    ping(resp).await;
    lb.stop().await;
}

#[tokio::test]
async fn a_pipeline_that_keeps_finishing_commands_is_never_stalled() {
    let a = Fake::start(1, NodeRole::Leader, 1, 0).await;
    let (lb, resp) = with_resp_door(&a).await;
    let mut c = timeout(T, TcpStream::connect(resp)).await.unwrap().unwrap();
    // Each write ends the command before and starts the next, so the door
    // always holds part of a command, for many times the timeout.
    c.write_all(b"PI").await.unwrap();
    let rounds = 40;
    for _ in 0..rounds {
        tokio::time::sleep(STALL / 6).await;
        c.write_all(b"NG\r\nPI").await.unwrap();
    }
    c.write_all(b"NG\r\n").await.unwrap();
    let want = b"+PONG\r\n".repeat(rounds + 1);
    let mut got = vec![0u8; want.len()];
    timeout(T, c.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, want);
    lb.stop().await;
}
