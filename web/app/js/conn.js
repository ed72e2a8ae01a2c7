// The WebSocket to the server: parley's JSON protocol, one object per message. Requests
// carry an id and resolve with their response; pushes (`event`) go to `onEvent`. The
// connection logs in with its first message (a device token, never in the URL), comes
// back after drops with growing pauses, and watches itself with PINGs.

const PING_EVERY = 25000;
const PING_TIMEOUT = 10000;
const REQUEST_TIMEOUT = 30000;

/** The server's answer to a login of a device that has a session open (another tab). */
export const DEVICE_BUSY = 'Device already connected';

export class Connection {
  /**
   * @param {object} handlers onStatus(status, detail), onEvent(event), onLogin(name) (after
   *   every successful login, before pushes), onRefused(message) (the token no longer works),
   *   onBusy() (the device has a session elsewhere: true to stop, false to try again later)
   */
  constructor(handlers) {
    this.handlers = handlers;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();
    this.token = null;
    this.retries = 0;
    this.timer = null;
    this.pinger = null;
    this.stopped = true;
    this.status = 'offline';
    /** Removes the page listeners `start` added (a stopped connection keeps none). */
    this.unlisten = null;
  }

  /** The URL of the socket: the page's own origin. */
  static url() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/ws`;
  }

  /** Opens a socket for a single exchange before login (register, password login). */
  static async once(steps) {
    const conn = new Connection({ onStatus() {}, onEvent() {} });
    try {
      await conn.open();
      return await steps(conn);
    } finally {
      conn.close();
    }
  }

  open() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(Connection.url());
      this.ws = ws;
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new Error('cannot reach the server'));
      ws.onmessage = (e) => this.receive(e.data);
      ws.onclose = () => {
        reject(new Error('connection closed'));
        if (this.ws !== ws) return;
        this.ws = null;
        this.failAll('connection lost');
        // While connecting, `connect` handles the failure itself.
        if (this.status === 'online') this.dropped('connection lost');
      };
    });
  }

  /** Stays connected and logged in with `token` until `stop`. */
  start(token) {
    this.token = token;
    this.stopped = false;
    this.retries = 0;
    this.listen();
    this.connect();
  }

  /** Reconnects at once when the network comes back or the tab is shown again. */
  listen() {
    this.unlisten?.();
    const signal = new AbortController();
    window.addEventListener('online', () => this.soon(), { signal: signal.signal });
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) this.soon();
    }, { signal: signal.signal });
    this.unlisten = () => signal.abort();
  }

  stop() {
    this.stopped = true;
    this.unlisten?.();
    this.unlisten = null;
    clearTimeout(this.timer);
    this.close();
    this.setStatus('stopped');
  }

  /**
   * Ends the session cleanly for another tab to take it: waits for the answers in flight
   * (a message being sent gets its OK), closes the socket and waits for the server's close,
   * so that the device is free when this resolves. Each wait is bounded by `ms`.
   */
  async release(ms = 1000) {
    this.stopped = true;
    this.unlisten?.();
    this.unlisten = null;
    clearTimeout(this.timer);
    const ws = this.ws;
    const pause = () => new Promise((resolve) => { setTimeout(resolve, ms); });
    if (ws && this.pending.size) {
      await Promise.race([Promise.all([...this.pending.values()].map((w) => w.settled)), pause()]);
    }
    const closed = ws && ws.readyState !== WebSocket.CLOSED
      ? new Promise((resolve) => { ws.addEventListener('close', resolve, { once: true }); })
      : null;
    this.close();
    if (closed) await Promise.race([closed, pause()]);
    this.setStatus('stopped');
  }

  close() {
    clearInterval(this.pinger);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
    this.failAll('closed');
  }

  setStatus(status, detail) {
    this.status = status;
    this.handlers.onStatus(status, detail);
  }

  async connect() {
    clearTimeout(this.timer);
    if (this.stopped || this.ws) return;
    this.setStatus('connecting');
    try {
      await this.open();
      const answer = await this.request('RESUME', { token: this.token });
      if (!answer.success) {
        if (/credentials/i.test(answer.message)) {
          this.stop();
          this.handlers.onRefused?.(answer.message);
          return;
        }
        if (answer.message === DEVICE_BUSY && this.handlers.onBusy?.()) {
          this.stop();
          return;
        }
        throw new Error(answer.message);
      }
      await this.handlers.onLogin?.(answer.data);
      // From here on pushes arrive: first what this device missed, in order, then live.
      const sub = await this.request('SUBSCRIBE', { acks: true });
      if (!sub.success) throw new Error(sub.message);
      this.retries = 0;
      this.setStatus('online');
      this.keepAlive();
    } catch (e) {
      const ws = this.ws;
      this.ws = null;
      if (ws) ws.close();
      this.dropped(e.message);
    }
  }

  /** The socket is gone: try again after a pause that grows (1 s to 30 s, with jitter). */
  dropped(why) {
    clearInterval(this.pinger);
    this.ws = null;
    if (this.stopped) return;
    const pause = Math.min(30000, 1000 * 2 ** this.retries) * (0.75 + Math.random() * 0.5);
    this.retries = Math.min(this.retries + 1, 10);
    this.setStatus('offline', { retryAt: Date.now() + pause, why });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), pause);
  }

  /** Tries at once (the network came back, the tab was shown again). */
  soon() {
    if (!this.stopped && !this.ws) {
      this.retries = 0;
      this.connect();
    }
  }

  keepAlive() {
    clearInterval(this.pinger);
    const ws = this.ws;
    this.pinger = setInterval(async () => {
      if (this.ws !== ws) return;
      const timeout = setTimeout(() => {
        // No answer: the socket is dead even if the browser does not know yet.
        if (this.ws === ws) {
          this.ws = null;
          ws.close();
          this.failAll('connection lost');
          this.dropped('no answer to a ping');
        }
      }, PING_TIMEOUT);
      try {
        await this.request('PING');
      } catch {
        /* handled by the timeout or the close */
      }
      clearTimeout(timeout);
    }, PING_EVERY);
  }

  receive(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (msg.event) {
      this.handlers.onEvent(msg);
      return;
    }
    const waiter = this.pending.get(msg.id);
    if (waiter) {
      this.pending.delete(msg.id);
      clearTimeout(waiter.timeout);
      waiter.resolve(msg);
    }
  }

  /** Sends a command; resolves with its response `{success, message, data}`. */
  request(command, fields = {}) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new Error('offline'));
    }
    const id = this.nextId++;
    const waiter = {};
    const answer = new Promise((resolve, reject) => {
      const timeout = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error('no answer from the server'));
      }, REQUEST_TIMEOUT);
      Object.assign(waiter, { resolve, reject, timeout });
      this.pending.set(id, waiter);
      ws.send(JSON.stringify({ command, data: '', ...fields, id }));
    });
    waiter.settled = answer.then(() => {}, () => {});
    return answer;
  }

  /** Like `request`, but a refusal throws with the server's message. */
  async call(command, fields = {}) {
    const answer = await this.request(command, fields);
    if (!answer.success) throw new Error(answer.message);
    return answer.data;
  }

  /** Sends without waiting for the answer (acks). */
  send(command, fields = {}) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      const id = this.nextId++;
      this.ws.send(JSON.stringify({ command, data: '', ...fields, id }));
    }
  }

  failAll(why) {
    for (const [, waiter] of this.pending) {
      clearTimeout(waiter.timeout);
      waiter.reject(new Error(why));
    }
    this.pending.clear();
  }
}
