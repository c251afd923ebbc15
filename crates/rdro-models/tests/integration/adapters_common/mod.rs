//! Shared by the `adapters_*` tests (and the CLI's tests, through `#[path]`): fixture loading and
//! a small Hugging Face Hub stand-in on 127.0.0.1 that implements the endpoints the `hf-hub`
//! client calls for downloads and uploads and records every request.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use candle_core::{DType, Device, Tensor};
use rdro_models::Batch;

pub type R<T> = Result<T, Box<dyn std::error::Error>>;

/// `tests/fixtures/models` of the repository.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models")
}

/// The padded batch and the expected tensors of a fixture model.
pub fn fixture_batch(name: &str) -> R<(HashMap<String, Tensor>, Batch)> {
    let expected = candle_core::safetensors::load(
        fixtures().join(name).join("expected.safetensors"),
        &Device::Cpu,
    )?;
    let ids = expected["input_ids"]
        .to_dtype(DType::U32)?
        .to_vec2::<u32>()?;
    let attn = expected["attention_mask"].to_vec2::<i64>()?;
    let target = expected["target_mask"].to_vec2::<i64>()?;
    let lengths = attn
        .iter()
        .map(|r| r.iter().filter(|m| **m == 1).count())
        .collect();
    let target = target
        .iter()
        .map(|r| r.iter().map(|m| *m == 1).collect())
        .collect();
    let batch = Batch::from_padded(ids, lengths, target)?;
    Ok((expected, batch))
}

/// Largest |a - b| over two dense `[rows, T]` log-prob tables.
pub fn max_abs_diff(a: &[Vec<f32>], b: &Tensor) -> R<f32> {
    let b = b.to_vec2::<f32>()?;
    let mut m = 0f32;
    for (ra, rb) in a.iter().zip(&b) {
        for (x, y) in ra.iter().zip(rb) {
            m = m.max((x - y).abs());
        }
    }
    Ok(m)
}

/// Copies a folder (files only, one level) into `to`.
pub fn copy_dir(from: &Path, to: &Path) -> R<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Names in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Hub options for tests: cache in `cache` (token file beside it), server at `endpoint`, nothing
/// read from the environment.
pub fn local_hub_options(
    cache: &Path,
    endpoint: &str,
    token: Option<&str>,
    offline: bool,
) -> rdro_models::hub::HubOptions {
    rdro_models::hub::HubOptions {
        cache_dir: cache.to_path_buf(),
        endpoint: endpoint.to_string(),
        token: token.map(str::to_string),
        token_file: cache.join("token"),
        offline,
        revision: "main".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Mock Hub
// ---------------------------------------------------------------------------------------------

/// One HTTP request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A commit as it arrived.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    pub repo: String,
    pub revision: String,
    pub create_pr: bool,
    pub summary: String,
    pub files: BTreeMap<String, Vec<u8>>,
    /// Files announced as LFS pointers (`lfsFile`) instead of inline content.
    pub lfs_files: BTreeSet<String>,
}

/// What the server knows and has seen.
#[derive(Debug, Default)]
pub struct HubState {
    /// Token every request must carry (`Authorization: Bearer ...`); `None` accepts anything.
    pub token: Option<String>,
    /// Existing repositories (`owner/name`) with their branches.
    pub repos: BTreeMap<String, BTreeSet<String>>,
    /// Repositories created through the API, with their `private` flag.
    pub created: Vec<(String, bool)>,
    /// Commits received.
    pub commits: Vec<Commit>,
    /// Files served for downloads: (`owner/name`, path) -> content; data set files under
    /// `datasets/owner/name`.
    pub served: BTreeMap<(String, String), Vec<u8>>,
    /// Paths the preupload endpoint reported as LFS.
    pub preupload_lfs: BTreeSet<String>,
    /// Every request, in order.
    pub requests: Vec<Request>,
}

/// The server; stopped (and its thread joined) by [`MockHub::stop`] or on drop.
pub struct MockHub {
    pub url: String,
    pub state: Arc<Mutex<HubState>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl MockHub {
    pub fn start(token: Option<&str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(Mutex::new(HubState {
            token: token.map(str::to_string),
            ..Default::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let url = format!("http://{addr}");
        let base = url.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    let _ = serve(stream, &s, &base);
                }
            }
        });
        Self {
            url,
            state,
            stop,
            addr,
            thread: Some(thread),
        }
    }

    pub fn with_state<T>(&self, f: impl FnOnce(&mut HubState) -> T) -> T {
        f(&mut self.state.lock().expect("state"))
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr);
            let _ = t.join();
        }
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
    }
    Ok(Some(Request {
        method,
        path,
        query,
        headers,
        body,
    }))
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        out += &format!("{k}: {v}\r\n");
    }
    out += "\r\n";
    stream.write_all(out.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

fn json_response(
    stream: &mut TcpStream,
    status: u16,
    value: serde_json::Value,
) -> std::io::Result<()> {
    respond(
        stream,
        status,
        &[("Content-Type", "application/json".into())],
        value.to_string().as_bytes(),
        false,
    )
}

fn serve(mut stream: TcpStream, state: &Arc<Mutex<HubState>>, base: &str) -> std::io::Result<()> {
    let Some(req) = read_request(&mut stream)? else {
        return Ok(());
    };
    let mut st = state.lock().expect("state");
    st.requests.push(req.clone());
    if let Some(token) = &st.token {
        if req.header("authorization") != Some(&format!("Bearer {token}")) {
            drop(st);
            return json_response(
                &mut stream,
                401,
                serde_json::json!({"error": "Invalid credentials"}),
            );
        }
    }
    let segs: Vec<String> = req
        .path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let seg: Vec<&str> = segs.iter().map(String::as_str).collect();
    let json_body = || serde_json::from_slice::<serde_json::Value>(&req.body).unwrap_or_default();
    match (req.method.as_str(), seg.as_slice()) {
        ("POST", ["api", "repos", "create"]) => {
            let b = json_body();
            let name = b["name"].as_str().unwrap_or_default();
            let id = match b["organization"].as_str() {
                Some(org) => format!("{org}/{name}"),
                None => name.to_string(),
            };
            if st.repos.contains_key(&id) {
                drop(st);
                return json_response(
                    &mut stream,
                    409,
                    serde_json::json!({"error": "You already created this model repo"}),
                );
            }
            st.repos
                .insert(id.clone(), BTreeSet::from(["main".to_string()]));
            st.created
                .push((id.clone(), b["private"].as_bool().unwrap_or(false)));
            drop(st);
            json_response(
                &mut stream,
                200,
                serde_json::json!({"url": format!("{base}/{id}")}),
            )
        }
        ("GET", ["api", "models", owner, name]) => {
            let id = format!("{owner}/{name}");
            let found = st.repos.contains_key(&id);
            drop(st);
            if found {
                json_response(
                    &mut stream,
                    200,
                    serde_json::json!({"id": id, "sha": "0".repeat(40)}),
                )
            } else {
                json_response(
                    &mut stream,
                    404,
                    serde_json::json!({"error": "Repository not found"}),
                )
            }
        }
        ("GET", ["api", "models", owner, name, "revision", rev]) => {
            let id = format!("{owner}/{name}");
            let found = st.repos.get(&id).is_some_and(|b| b.contains(*rev));
            drop(st);
            if found {
                json_response(
                    &mut stream,
                    200,
                    serde_json::json!({"id": id, "sha": "1".repeat(40)}),
                )
            } else {
                json_response(
                    &mut stream,
                    404,
                    serde_json::json!({"error": "Revision not found"}),
                )
            }
        }
        ("POST", ["api", "models", owner, name, "branch", branch]) => {
            let id = format!("{owner}/{name}");
            let ok = match st.repos.get_mut(&id) {
                Some(b) => {
                    b.insert(branch.to_string());
                    true
                }
                None => false,
            };
            drop(st);
            json_response(
                &mut stream,
                if ok { 200 } else { 404 },
                serde_json::json!({}),
            )
        }
        ("POST", ["api", "models", owner, name, "preupload", _rev]) => {
            let id = format!("{owner}/{name}");
            if !st.repos.contains_key(&id) {
                drop(st);
                return json_response(
                    &mut stream,
                    404,
                    serde_json::json!({"error": "Repository not found"}),
                );
            }
            let files: Vec<serde_json::Value> = json_body()["files"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|f| {
                    let path = f["path"].as_str().unwrap_or_default().to_string();
                    let lfs = path.ends_with(".safetensors") || path.ends_with(".gguf");
                    if lfs {
                        st.preupload_lfs.insert(path.clone());
                    }
                    serde_json::json!({"path": path, "uploadMode": if lfs { "lfs" } else { "regular" }, "shouldIgnore": false})
                })
                .collect();
            drop(st);
            json_response(&mut stream, 200, serde_json::json!({"files": files}))
        }
        ("POST", [_owner, repo_git, "info", "lfs", "objects", "batch"])
            if repo_git.ends_with(".git") =>
        {
            // Offer only the basic transfer: the client then sends the content inline.
            drop(st);
            respond(
                &mut stream,
                200,
                &[("Content-Type", "application/vnd.git-lfs+json".into())],
                serde_json::json!({"transfer": "basic", "objects": []})
                    .to_string()
                    .as_bytes(),
                false,
            )
        }
        ("POST", ["api", "models", owner, name, "commit", rev]) => {
            let id = format!("{owner}/{name}");
            if !st.repos.get(&id).is_some_and(|b| b.contains(*rev)) {
                drop(st);
                return json_response(
                    &mut stream,
                    404,
                    serde_json::json!({"error": "Revision not found"}),
                );
            }
            let mut commit = Commit {
                repo: id.clone(),
                revision: rev.to_string(),
                create_pr: req.query.split('&').any(|kv| kv == "create_pr=1"),
                ..Default::default()
            };
            for line in req.body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
                match v["key"].as_str() {
                    Some("header") => {
                        commit.summary = v["value"]["summary"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string()
                    }
                    Some("file") => {
                        let path = v["value"]["path"].as_str().unwrap_or_default().to_string();
                        let content =
                            base64_decode(v["value"]["content"].as_str().unwrap_or_default());
                        commit.files.insert(path, content);
                    }
                    Some("lfsFile") => {
                        commit
                            .lfs_files
                            .insert(v["value"]["path"].as_str().unwrap_or_default().to_string());
                    }
                    _ => {}
                }
            }
            let n = st.commits.len() + 1;
            let pr = commit.create_pr;
            st.commits.push(commit);
            drop(st);
            let oid = format!("{n:040x}");
            let mut body = serde_json::json!({
                "commitUrl": format!("{base}/{id}/commit/{oid}"),
                "commitOid": oid,
                "commitMessage": "ok",
            });
            if pr {
                body["pullRequestUrl"] = serde_json::json!(format!("{base}/{id}/discussions/{n}"));
                body["prUrl"] = serde_json::json!(format!("{base}/{id}/discussions/{n}"));
                body["prNum"] = serde_json::json!(n);
            }
            json_response(&mut stream, 200, body)
        }
        ("GET", ["api", "datasets", owner, name, "tree", _rev]) => {
            let id = format!("datasets/{owner}/{name}");
            let files: Vec<serde_json::Value> = st
                .served
                .iter()
                .filter(|((repo, _), _)| *repo == id)
                .map(|((_, path), bytes)| {
                    serde_json::json!({
                        "type": "file",
                        "oid": format!("{:040x}", fnv(bytes)),
                        "size": bytes.len(),
                        "path": path,
                    })
                })
                .collect();
            drop(st);
            json_response(&mut stream, 200, serde_json::json!(files))
        }
        (m @ ("GET" | "HEAD"), [owner, name, "resolve", _rev, rest @ ..])
        | (m @ ("GET" | "HEAD"), ["datasets", owner, name, "resolve", _rev, rest @ ..]) => {
            // Data set files are served under `datasets/owner/name`, model files under `owner/name`.
            let id = match seg.first() {
                Some(&"datasets") if seg.get(3) == Some(&"resolve") => {
                    format!("datasets/{owner}/{name}")
                }
                _ => format!("{owner}/{name}"),
            };
            let file = rest.join("/");
            let content = st.served.get(&(id, file)).cloned();
            drop(st);
            let commit = "a".repeat(40);
            match content {
                Some(bytes) => {
                    let etag = format!("\"{:016x}{:024x}\"", fnv(&bytes), bytes.len());
                    respond(
                        &mut stream,
                        200,
                        &[
                            ("ETag", etag),
                            ("X-Repo-Commit", commit),
                            ("Content-Type", "application/octet-stream".into()),
                        ],
                        &bytes,
                        m == "HEAD",
                    )
                }
                None => respond(
                    &mut stream,
                    404,
                    &[
                        ("X-Repo-Commit", commit),
                        ("X-Error-Code", "EntryNotFound".into()),
                    ],
                    b"Entry not found",
                    m == "HEAD",
                ),
            }
        }
        _ => {
            drop(st);
            json_response(
                &mut stream,
                404,
                serde_json::json!({"error": format!("no route for {} {}", req.method, req.path)}),
            )
        }
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard base64 (with padding) to bytes.
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let Some(v) = val(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
