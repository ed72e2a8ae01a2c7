//! The web app, embedded in the binary: the server stays one file to copy, and the app
//! works on a machine without internet (no CDN, no external fonts). Plain HTML, CSS and
//! JavaScript modules from `web/app/`, served as they are: there is no build step.

use std::sync::OnceLock;

use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Response, StatusCode};
use sha2::{Digest, Sha256};

use super::response::{empty, full, Body};

/// One file of the app.
pub struct Asset {
    /// Its URL path.
    pub path: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! asset {
    ($file:literal, $type:expr) => {
        Asset {
            path: concat!("/", $file),
            content_type: $type,
            bytes: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../web/app/",
                $file
            )),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of `web/app/` (a test checks that none is missing).
pub static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("manifest.json", "application/manifest+json"),
    asset!("js/main.js", JS),
    asset!("js/conn.js", JS),
    asset!("js/state.js", JS),
    asset!("js/view.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/files.js", JS),
    asset!("js/sha256.js", JS),
    asset!("js/format.js", JS),
    asset!("js/tabs.js", JS),
];

/// The asset at `path` (`/` is the app's page).
pub fn find(path: &str) -> Option<(usize, &'static Asset)> {
    let path = if path == "/" { "/index.html" } else { path };
    ASSETS.iter().enumerate().find(|(_, a)| a.path == path)
}

/// Each asset's entity tag: its content's hash, computed once.
fn etag(index: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let hash = Sha256::digest(a.bytes);
                let hex: String = hash[..12].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    });
    &tags[index]
}

/// Serves an asset: revalidated on every load (`no-cache`), so a new server's app is
/// picked up at once, and a `304` when the browser has it.
pub fn serve(index: usize, asset: &Asset, request: &HeaderMap) -> Response<Body> {
    let tag = etag(index);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut response = if fresh {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(full(asset.bytes));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        r
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_static(tag));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file added to `web/app/` but not to the table would be missing from the binary.
    #[test]
    fn every_file_of_the_app_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/app");
        let mut on_disk = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let rel = path.strip_prefix(&root).unwrap().to_string_lossy();
                    on_disk.push(format!("/{rel}"));
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.path.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
        assert_eq!(find("/").unwrap().1.path, "/index.html");
        assert_ne!(etag(0), etag(1));
    }
}
