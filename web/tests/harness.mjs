// What the browser tests need around the browser: a real parley server (the binary that
// `cargo build` made), Debian's Chromium through playwright-core, and the other kinds of
// clients (a text user as with ncat, a binary user as seed 000's clients) over real sockets.

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
export const artifacts = process.env.PARLEY_ARTIFACTS || path.join(root, 'target', 'web-artifacts');
mkdirSync(artifacts, { recursive: true });

const binary = process.env.PARLEY_BIN || path.join(root, 'target', 'debug', 'parley');

/** A parley server on 127.0.0.1 with a fresh data directory. */
export class Server {
  constructor() {
    this.dir = mkdtempSync(path.join(os.tmpdir(), 'parley-web-'));
    this.port = 0;
    this.proc = null;
  }

  async start() {
    const listen = `127.0.0.1:${this.port}`;
    // The server reads every PARLEY_* variable as a setting: pass on none but these.
    const inherited = Object.entries(process.env).filter(([k]) => !k.startsWith('PARLEY_'));
    const env = {
      ...Object.fromEntries(inherited),
      PARLEY_ARGON2_MEMORY_KIB: '1024',
      PARLEY_ARGON2_ITERATIONS: '1',
      PARLEY_SHUTDOWN_TIMEOUT_MS: '3000',
      NO_COLOR: '1',
    };
    this.proc = spawn(binary, ['serve', '--listen', listen, '--data-dir', this.dir], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.log = '';
    const started = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the server did not start:\n${this.log}`)), 30000);
      const watch = (chunk) => {
        this.log += String(chunk).replace(/\x1b\[[0-9;]*m/g, '');
        const m = /addr=(127\.0\.0\.1:\d+) protocol="every protocol"/.exec(this.log);
        if (m && /parley started/.test(this.log)) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      };
      this.proc.stdout.on('data', watch);
      this.proc.stderr.on('data', watch);
      this.proc.on('exit', (code) => reject(new Error(`the server exited (${code}):\n${this.log}`)));
    });
    const addr = await started;
    this.port = Number(addr.split(':')[1]);
    this.url = `http://127.0.0.1:${this.port}/`;
    return this;
  }

  /** Stops gracefully (SIGTERM) and waits for the exit. */
  async stop() {
    if (!this.proc) return;
    const proc = this.proc;
    this.proc = null;
    const exited = new Promise((resolve) => proc.on('exit', resolve));
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 15000);
    await exited;
    clearTimeout(timer);
  }

  /** Stops and starts again on the same port and data. */
  async restart() {
    await this.stop();
    await this.start();
  }

  async dispose() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Debian's Chromium, headless, never reaching the network. Playwright gives every launch
 * a fresh temporary profile (user-data-dir) of its own. */
export async function browser() {
  const args = ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-quic', '--disable-dev-shm-usage'];
  return chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args, timeout: 60000 });
}

/** A new page of a fresh context (its own storage: another browser, as far as the app
 * knows); `init` runs in the page before its scripts (stubs, see Playwright's addInitScript). */
export async function page(b, viewport = { width: 1200, height: 800 }, init = null) {
  const context = await b.newContext({ viewport, acceptDownloads: true });
  if (init) await context.addInitScript(init);
  return tab(context);
}

/** Another page (tab) of `context`: the same browser as its other pages. */
export async function tab(context) {
  const p = await context.newPage();
  p.setDefaultTimeout(20000);
  p.errors = [];
  p.on('pageerror', (e) => p.errors.push(e));
  p.on('dialog', (d) => {
    p.errors.push(new Error(`a dialog opened: ${d.message()}`));
    d.dismiss().catch(() => {});
  });
  return p;
}

/** Registers `name` in the app and waits for the chat. */
export async function register(p, server, name, password = 'correct horse') {
  await p.goto(server.url);
  await p.click('#tab-register');
  await p.fill('#login-name', name);
  await p.fill('#login-password', password);
  await p.click('#login-submit');
  await p.waitForSelector('#app:not([hidden])');
  await p.waitForFunction(() => document.querySelector('#me-status')?.classList.contains('online'));
}

/** A line-protocol user, as `ncat` would be. */
export class TextUser {
  static async connect(port, name) {
    const u = new TextUser();
    u.socket = net.connect(port, '127.0.0.1');
    u.socket.setEncoding('utf8');
    u.buf = '';
    u.lines = [];
    u.waiters = [];
    u.socket.on('data', (d) => {
      u.buf += d;
      let i;
      while ((i = u.buf.indexOf('\n')) >= 0) {
        u.lines.push(u.buf.slice(0, i));
        u.buf = u.buf.slice(i + 1);
      }
      u.wake();
    });
    await new Promise((resolve, reject) => {
      u.socket.once('connect', resolve);
      u.socket.once('error', reject);
    });
    if (name) {
      u.send(`LOGIN ${name}`);
      const ok = await u.line();
      if (ok !== 'OK') throw new Error(`LOGIN ${name}: ${ok}`);
    }
    return u;
  }

  wake() {
    for (const w of this.waiters.splice(0)) w();
  }

  send(line) {
    this.socket.write(`${line}\n`);
  }

  /** The next line; fails after 20 s. */
  async line() {
    const deadline = Date.now() + 20000;
    while (!this.lines.length) {
      if (Date.now() > deadline) throw new Error(`no line; buffer: ${this.buf}`);
      await new Promise((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 500);
      });
    }
    return this.lines.shift();
  }

  /** The next line that matches `re`. */
  async lineMatching(re) {
    for (let i = 0; i < 100; i++) {
      const l = await this.line();
      if (re.test(l)) return l;
    }
    throw new Error(`no line matching ${re}`);
  }

  close() {
    this.socket.destroy();
  }
}

/** A seed-000 binary user: login, send a message, read pushed messages. */
export class BinaryUser {
  static async connect(port, name) {
    const u = new BinaryUser();
    u.name = name;
    u.socket = net.connect(port, '127.0.0.1');
    u.buf = Buffer.alloc(0);
    u.frames = [];
    u.waiters = [];
    u.socket.on('data', (d) => {
      u.buf = Buffer.concat([u.buf, d]);
      while (u.buf.length >= 4 && u.buf.length >= 4 + u.buf.readUInt32BE(0)) {
        const len = u.buf.readUInt32BE(0);
        u.frames.push(u.buf.subarray(4, 4 + len));
        u.buf = u.buf.subarray(4 + len);
      }
      for (const w of u.waiters.splice(0)) w();
    });
    await new Promise((resolve, reject) => {
      u.socket.once('connect', resolve);
      u.socket.once('error', reject);
    });
    u.send(0x01, Buffer.concat([u32(1), str(name)]));
    const code = await u.response();
    if (code !== 1) throw new Error(`binary login of ${name}: ${code}`);
    return u;
  }

  send(key, body) {
    const head = Buffer.alloc(7);
    head.writeUInt32BE(3 + body.length, 0);
    head.writeUInt8(1, 4);
    head.writeUInt16BE(key, 5);
    this.socket.write(Buffer.concat([head, body]));
  }

  async frame() {
    const deadline = Date.now() + 20000;
    while (!this.frames.length) {
      if (Date.now() > deadline) throw new Error('no frame');
      await new Promise((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 500);
      });
    }
    return this.frames.shift();
  }

  async response() {
    const f = await this.frame();
    if (f.readUInt16BE(1) !== 0x03) throw new Error(`expected a response, got key ${f.readUInt16BE(1)}`);
    return f.readUInt16BE(7);
  }

  /** Sends `text` to `to`; resolves with the response code. */
  async message(to, text) {
    const time = BigInt(Date.now()) * 1000000n;
    const t = Buffer.alloc(8);
    t.writeBigUInt64BE(time);
    this.send(0x02, Buffer.concat([u32(2), str(text), str(this.name), str(to), t]));
    return this.response();
  }

  /** The next pushed message: {text, from, to}. */
  async push() {
    const f = await this.frame();
    if (f.readUInt16BE(1) !== 0x02) throw new Error(`expected a message, got key ${f.readUInt16BE(1)}`);
    let at = 7;
    const field = () => {
      const n = f.readUInt16BE(at);
      const s = f.subarray(at + 2, at + 2 + n).toString('utf8');
      at += 2 + n;
      return s;
    };
    const text = field();
    const from = field();
    const to = field();
    return { text, from, to };
  }

  close() {
    this.socket.destroy();
  }
}

function u32(n) {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

function str(s) {
  const b = Buffer.from(s, 'utf8');
  const n = Buffer.alloc(2);
  n.writeUInt16BE(b.length);
  return Buffer.concat([n, b]);
}

export const shot = (p, name) => p.screenshot({ path: path.join(artifacts, `${name}.png`) });
