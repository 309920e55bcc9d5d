//! `semikv-lb LISTEN REPLICA...`: see [`semikv_lb::cli`].

fn main() -> std::process::ExitCode {
    semikv_lb::cli::main(std::env::args_os().collect())
}
