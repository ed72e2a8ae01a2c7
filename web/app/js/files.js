// Files over HTTP: uploads in pieces with progress that resume where the server stopped,
// downloads with progress whose bytes are checked against their SHA-256. Both carry the
// device token in the Authorization header (no cookie).

import { Sha256, sha256OfBlob } from './sha256.js';

const PIECE = 1024 * 1024;

/** Answer of a PUT: {complete, received} or an error with the server's words. */
function put(token, hash, body, range, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', `/files/${hash}`);
    xhr.setRequestHeader('Authorization', `Bearer ${token}`);
    xhr.setRequestHeader('Content-Range', range);
    xhr.upload.onprogress = (e) => onProgress(e.loaded);
    xhr.onload = () => {
      if (xhr.status === 200 || xhr.status === 409) {
        try {
          resolve(JSON.parse(xhr.responseText));
          return;
        } catch {
          /* fall through */
        }
      }
      reject(new Error(xhr.responseText.trim() || `upload failed (${xhr.status})`));
    };
    xhr.onerror = () => reject(new Error('upload interrupted'));
    xhr.send(body);
  });
}

/**
 * Uploads `file`; `progress(phase, done, total)` with phase 'hashing' or 'uploading'.
 * Resolves with its SHA-256 once the server has verified and stored it.
 */
export async function upload(token, file, progress) {
  const hash = await sha256OfBlob(file, (d, t) => progress('hashing', d, t));
  const total = file.size;
  let { complete, received } = await put(token, hash, null, `bytes */${total}`, () => {});
  let failures = 0;
  while (!complete) {
    if (total === 0) {
      ({ complete, received } = await put(token, hash, new Blob([]), 'bytes */0', () => {}));
      break;
    }
    const end = Math.min(received + PIECE, total);
    const start = received;
    try {
      ({ complete, received } = await put(token, hash, file.slice(start, end),
        `bytes ${start}-${end - 1}/${total}`, (n) => progress('uploading', start + n, total)));
      failures = 0;
    } catch (e) {
      // A cut connection: ask where the server is, then go on from there.
      if (++failures > 5) throw e;
      await new Promise((r) => setTimeout(r, 500 * failures));
      ({ complete, received } = await put(token, hash, null, `bytes */${total}`, () => {}));
    }
    progress('uploading', received ?? total, total);
  }
  return hash;
}

/** The URL of a stored file (name and type label the download). */
export function fileUrl(file) {
  const q = new URLSearchParams({ name: file.name, type: file.type });
  return `/files/${file.sha256}?${q}`;
}

/**
 * Downloads a file the user may read; `progress(done, total)`. Resolves with a Blob whose
 * SHA-256 was checked against the file's.
 */
export async function download(token, file, progress = () => {}) {
  const response = await fetch(fileUrl(file), { headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) throw new Error((await response.text()).trim() || `download failed (${response.status})`);
  const reader = response.body.getReader();
  const hash = new Sha256();
  const parts = [];
  let done = 0;
  for (;;) {
    const { value, done: end } = await reader.read();
    if (end) break;
    hash.update(value);
    parts.push(value);
    done += value.length;
    progress(done, file.size);
  }
  if (hash.hex() !== file.sha256) throw new Error('the downloaded bytes do not match the file’s SHA-256');
  return new Blob(parts, { type: response.headers.get('Content-Type') || 'application/octet-stream' });
}

/** Hands a Blob to the browser as a download named `name`. */
export function save(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}
