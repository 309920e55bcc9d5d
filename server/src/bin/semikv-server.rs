//! `semikv-server ID`: one replica process; see [`semikv_server::cli`].

fn main() -> std::process::ExitCode {
    semikv_server::cli::main(std::env::args_os().collect())
}
