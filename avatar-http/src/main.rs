//! `avatar-http`: the DCGAN Avatar Generation API server.
//!
//! ```text
//! cargo run --release -p avatar-http -- --help
//! ```

use clap::Parser;

fn main() -> std::process::ExitCode {
    let config = avatar_http::Config::parse();
    avatar_http::telemetry::init(&config);
    match avatar_http::run(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
