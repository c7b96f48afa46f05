//! `hf://` references against a local stand-in for the Hugging Face Hub (its listing and
//! `resolve` endpoints, with the headers `hf-hub` reads): the right files are fetched once, the
//! pipeline built from the download draws what the local folder draws, and failures are typed.
#![cfg(feature = "hub")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use avatar_core::diffusion::pipeline::{StableDiffusion, TextToImageOptions};
use avatar_core::vqgan_clip::{OpenClipConfig, VqganClip};
use burn::tensor::{Device, Tensor};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Repository id -> (path in the repository -> bytes).
type Repos = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// A minimal hub: `GET /api/models/{repo}/revision/{rev}` and `GET /{repo}/resolve/{rev}/{file}`
/// with `Range`; every request path is logged.
struct MockHub {
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl MockHub {
    fn start(repos: Repos) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let repos = Arc::new(repos);
        let shared = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (repos, log) = (repos.clone(), shared.clone());
                std::thread::spawn(move || serve(stream, &repos, &log));
            }
        });
        MockHub { url, log }
    }

    /// The files fetched through `resolve` (metadata probes and downloads), deduplicated.
    fn fetched(&self, repo: &str) -> Vec<String> {
        let prefix = format!("/{repo}/resolve/main/");
        let mut files: Vec<String> = self
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|p| p.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        files.sort();
        files.dedup();
        files
    }

    fn requests(&self) -> usize {
        self.log.lock().unwrap().len()
    }
}

fn serve(stream: TcpStream, repos: &Repos, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut range_start = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
        if let Some(value) = header.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range_start = value.split('-').next().unwrap().trim().parse().unwrap_or(0);
        }
    }
    log.lock().unwrap().push(path.clone());
    let mut out = stream;
    let respond = |out: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]| {
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let _ = out.write_all(head.as_bytes());
        let _ = out.write_all(body);
    };
    let not_found = |out: &mut TcpStream| {
        let headers = [("X-Error-Code".to_owned(), "EntryNotFound".to_owned())];
        respond(out, "404 Not Found", &headers, b"{\"error\":\"not found\"}");
    };
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let repo = rest.split("/revision/").next().unwrap();
        let Some(files) = repos.get(repo) else {
            return not_found(&mut out);
        };
        let siblings: Vec<serde_json::Value> = files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
        let headers = [("Content-Type".to_owned(), "application/json".to_owned())];
        return respond(&mut out, "200 OK", &headers, body.as_bytes());
    }
    let found = repos.iter().find_map(|(repo, files)| {
        let file = path.strip_prefix(&format!("/{repo}/resolve/main/"))?;
        files.get(file)
    });
    let Some(bytes) = found else {
        return not_found(&mut out);
    };
    let start = range_start.min(bytes.len());
    let end = bytes.len().max(1) - 1;
    let etag = format!(
        "{:x}",
        bytes.len() * 7919 + bytes.iter().map(|&b| b as usize).sum::<usize>()
    );
    let headers = [
        ("ETag".to_owned(), format!("\"{etag}\"")),
        ("X-Repo-Commit".to_owned(), COMMIT.to_owned()),
        (
            "Content-Range".to_owned(),
            format!("bytes {start}-{end}/{}", bytes.len()),
        ),
    ];
    respond(&mut out, "206 Partial Content", &headers, &bytes[start..]);
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every file under `dir`, by its path relative to `dir`.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_str().unwrap();
                out.insert(rel.replace('\\', "/"), std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn draw(pipeline: &StableDiffusion) -> Vec<image::RgbaImage> {
    let options = TextToImageOptions {
        prompt: "an avatar".into(),
        num_inference_steps: 2,
        seed: Some("hub".into()),
        ..Default::default()
    };
    pipeline.text_to_image(&options, |_| true).unwrap()
}

#[test]
fn hub_references_download_the_needed_files_once_and_fail_typed() {
    let pipeline_dir = fixtures().join("diffusion/sd15_tiny");
    let local = tree(&pipeline_dir);
    // The full repository: plain and fp16 weights, plus formats we never read.
    let mut full = local.clone();
    for (file, bytes) in &local {
        if let Some(stem) = file.strip_suffix(".safetensors") {
            full.insert(format!("{stem}.fp16.safetensors"), bytes.clone());
        }
    }
    full.insert(
        "unet/diffusion_pytorch_model.bin".into(),
        b"pickle".to_vec(),
    );
    full.insert("text_encoder/flax_model.msgpack".into(), b"flax".to_vec());
    full.insert("README.md".into(), b"# tiny".to_vec());
    // A repository saved with variant="fp16" only.
    let fp16_only: BTreeMap<String, Vec<u8>> = local
        .iter()
        .map(|(file, bytes)| match file.strip_suffix(".safetensors") {
            Some(stem) => (format!("{stem}.fp16.safetensors"), bytes.clone()),
            None => (file.clone(), bytes.clone()),
        })
        .collect();
    let controlnet = tree(&fixtures().join("controlnet/sd15_controlnet_0"));
    let vqgan_clip_dir = fixtures().join("vqgan_clip");
    let repos: Repos = [
        ("test-org/tiny-vqgan-clip".to_owned(), tree(&vqgan_clip_dir)),
        ("test-org/tiny-sd".to_owned(), full),
        ("test-org/tiny-sd-fp16".to_owned(), fp16_only),
        ("test-org/tiny-controlnet".to_owned(), controlnet),
    ]
    .into_iter()
    .collect();
    let hub = MockHub::start(repos);
    let cache = tempfile::tempdir().unwrap();
    // SAFETY: the only test in this binary; set before any thread reads the environment.
    unsafe {
        std::env::set_var("HF_HOME", cache.path());
        std::env::set_var("HF_ENDPOINT", &hub.url);
        std::env::remove_var("HF_HUB_OFFLINE");
        std::env::remove_var("HF_TOKEN");
    }
    let device = Device::flex();
    let expected = draw(&StableDiffusion::load(&pipeline_dir, &device).unwrap());

    // A pipeline: the configs and one safetensors file per component, nothing else.
    let mut from_hub = StableDiffusion::load(Path::new("hf://test-org/tiny-sd"), &device).unwrap();
    let mut want: Vec<String> = local.keys().cloned().collect();
    want.sort();
    assert_eq!(hub.fetched("test-org/tiny-sd"), want);
    assert_eq!(
        draw(&from_hub),
        expected,
        "the downloaded pipeline draws the same"
    );

    // A component folder from another repository, plugged into that pipeline.
    let index = from_hub
        .load_controlnet(Path::new("hf://test-org/tiny-controlnet"))
        .unwrap();
    assert_eq!(index, 0);

    // ?variant=fp16 takes the variant files; a repository with only variants loads too.
    let resolved =
        avatar_core::hub::resolve(Path::new("hf://test-org/tiny-sd-fp16?variant=fp16")).unwrap();
    assert!(
        resolved
            .join("unet/diffusion_pytorch_model.fp16.safetensors")
            .is_file()
    );
    let fp16 = StableDiffusion::load(Path::new("hf://test-org/tiny-sd-fp16"), &device).unwrap();
    assert_eq!(draw(&fp16), expected);

    // One file.
    let config = avatar_core::hub::resolve(Path::new("hf://test-org/tiny-sd/unet/config.json"))
        .unwrap()
        .into_owned();
    assert_eq!(std::fs::read(&config).unwrap(), local["unet/config.json"]);

    // Single files for the other loaders: taming's yaml + Lightning checkpoint, open_clip's config
    // + state dict; the engine built from them computes what the local files give.
    let remote = |file: &str| PathBuf::from(format!("hf://test-org/tiny-vqgan-clip/{file}"));
    let vqgan_clip = |path: &dyn Fn(&str) -> PathBuf| {
        let clip = OpenClipConfig::from_json_file(&path("clip_config.json")).unwrap();
        let engine = VqganClip::load(
            &path("vqgan.yaml"),
            &path("vqgan.ckpt"),
            &clip,
            &path("clip.safetensors"),
            &device,
        )
        .unwrap();
        let embed_dim = engine.vqgan().quantize.codebook().dims()[1];
        let z = Tensor::<4>::ones([1, embed_dim, 2, 2], engine.device());
        (
            engine.embed_texts(&["a cartoon avatar"]).into_data(),
            engine.synthesize(z).into_data(),
        )
    };
    assert_eq!(vqgan_clip(&remote), vqgan_clip(&|f| vqgan_clip_dir.join(f)));

    // Loading again downloads nothing (only the listing is asked for).
    let before = hub.fetched("test-org/tiny-sd").len();
    let requests = hub.requests();
    StableDiffusion::load(Path::new("hf://test-org/tiny-sd"), &device).unwrap();
    assert_eq!(hub.fetched("test-org/tiny-sd").len(), before);
    assert_eq!(
        hub.requests(),
        requests + 1,
        "one listing request, no downloads"
    );

    // Failures are typed errors, not panics.
    let code = |path: &str| match StableDiffusion::load(Path::new(path), &device) {
        Ok(_) => panic!("{path} loaded"),
        Err(e) => (e.code(), e.to_string()),
    };
    let (error, message) = code("hf://test-org/no-such-repo");
    assert_eq!(error, "ERR_DOWNLOAD", "{message}");
    assert!(
        message.contains("hf://test-org/no-such-repo@main"),
        "{message}"
    );
    let (error, message) = code("hf://not-a-repo-id");
    assert_eq!(error, "ERR_INVALID_OPTION", "{message}");
    let missing = avatar_core::hub::resolve(Path::new("hf://test-org/tiny-sd/nope.safetensors"));
    assert_eq!(missing.unwrap_err().code(), "ERR_DOWNLOAD");

    // Unreachable hub: a cached folder is used as it is; an uncached one is a download error.
    // SAFETY: as above.
    unsafe { std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9") };
    let offline = StableDiffusion::load(Path::new("hf://test-org/tiny-sd"), &device).unwrap();
    assert_eq!(draw(&offline), expected);
    let (error, _) = code("hf://test-org/never-downloaded");
    assert_eq!(error, "ERR_DOWNLOAD");
    unsafe { std::env::set_var("HF_HUB_OFFLINE", "1") };
    assert!(StableDiffusion::load(Path::new("hf://test-org/tiny-sd"), &device).is_ok());
    let (error, message) = code("hf://test-org/tiny-controlnet-2");
    assert_eq!(error, "ERR_DOWNLOAD");
    assert!(message.contains("HF_HUB_OFFLINE"), "{message}");
}
