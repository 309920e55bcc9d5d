//! Admin messages a replica refuses change nothing, on disk included: an
//! epoch is persisted only for a message the replica will act on.

use crate::support::{Peer, Server};
use semikv_protocol::{Epoch, ErrorReply, Role, MAX_SYNC_TIMEOUT_MS};
use semikv_server::storage::{meta, DataDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_promote_leaves_the_persisted_epoch_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("replica-1");
    let server = Server::start(1, &data, None).await;
    let mut admin = Peer::connect(server.addr, Role::Balancer).await;
    let refused = admin
        .promote_with(5, 0, MAX_SYNC_TIMEOUT_MS + 1)
        .await
        .unwrap_err();
    assert!(matches!(refused, ErrorReply::Invalid { .. }), "{refused:?}");
    assert_eq!(admin.status().await.epoch, Epoch::ZERO);
    assert_eq!(
        meta::load_epoch(&DataDir::on_os(&data)).unwrap(),
        Epoch::ZERO
    );
    // The same promotion with sane settings goes through and is persisted.
    admin.promote_with(5, 0, 1000).await.unwrap();
    assert_eq!(
        meta::load_epoch(&DataDir::on_os(&data)).unwrap(),
        Epoch::from_raw(5)
    );
    drop(admin);
    server.stop().await.unwrap();
}
