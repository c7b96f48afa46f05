//! Integration tests: a real server on a free loopback port, spoken to over HTTP.
//!
//! Run with `cargo test --release -p avatar-http`.

mod api;
mod auth;
mod avatar_gen;
mod browser;
mod common;
mod face_avatar;
mod fetch;
mod scenes;
mod tasks;
mod vqgan;
