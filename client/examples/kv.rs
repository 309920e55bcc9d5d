//! Writes, reads and deletes one key through a semikv balancer, the way an
//! application would:
//!
//! ```sh
//! cargo run --release --bin semikv -- --local 3      # prints the balancer's address
//! cargo run -p semikv-client --example kv -- 127.0.0.1:PORT
//! ```

use semikv_client::{ClientConfig, ClientError, ErrorReply, RetryingClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let mut kv = RetryingClient::new(addr, ClientConfig::default())
        .with_notices(Box::new(|notice| eprintln!("kv: {notice}")));

    match kv.set("greeting", "hello from Rust").await {
        Ok(index) => println!("set greeting (log index {index})"),
        // Not retried: the write may or may not have been applied.
        Err(ClientError::Server(ErrorReply::Indeterminate { reason })) => {
            eprintln!("set greeting: outcome unknown ({reason}); read it back to find out");
        }
        Err(e) => return Err(e.into()),
    }
    let value = kv.get("greeting").await?;
    println!(
        "get greeting: {}",
        value.map_or("(nil)".into(), |v| String::from_utf8_lossy(&v).into_owned())
    );
    kv.delete("greeting").await?;
    println!("deleted greeting; now {:?}", kv.get("greeting").await?);
    Ok(())
}
