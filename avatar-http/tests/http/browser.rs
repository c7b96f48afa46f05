//! Runs the headless-Chromium test (`tests/browser`, `node --test`) against an in-process server
//! with the test weights. Skipped, with a message, when Chromium or Node is missing.

use std::path::Path;
use std::process::Command;

use crate::common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_works_in_headless_chromium() {
    if !Path::new("/usr/bin/chromium").exists() {
        println!("skipped: no chromium");
        return;
    }
    if Command::new("node").arg("--version").output().is_err() {
        println!("skipped: no node");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !dir.join("node_modules/playwright-core").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm ci failed in {}", dir.display());
    }
    let s = TestServer::default().await;
    let url = s.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--test", "--test-reporter=spec"])
            .current_dir(&dir)
            .env("AVATAR_URL", url)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{log}");
    assert!(output.status.success(), "browser test failed:\n{log}");
    s.stop().await;
}
