//! daemoneye-agent: the long-running daemon (embedded broker and process manager).
//!
//! The runtime is not built yet: this binary states so and exits with status 2, so that no
//! script mistakes it for a running agent.

fn main() {
    eprintln!(
        "daemoneye-agent {}: the broker server and process manager are not built yet \
         (see README.md, \"Status\"); nothing is listening.",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
