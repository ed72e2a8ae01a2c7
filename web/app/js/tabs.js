// One tab of this browser holds the session; the others say "parley is open in another
// tab" and offer "Use here", as WhatsApp Web and Discord do. A browser is one device of the
// account (its localStorage keeps the device name and token) and the server allows one
// session per device, so two tabs must never both connect.
//
// The Web Locks API decides who holds the session: the tab holding the lock named after
// the device. Locks are released by the browser when a tab closes or crashes, so a new tab
// after a closed one simply gets it. To take the session over, a tab asks the holder on a
// BroadcastChannel to let go; the holder sends its acks, waits for the answers in flight,
// closes its socket cleanly and only then releases the lock, so the new tab connects to a
// free device and catches up from the device's cursor, as after any reconnect. A holder
// that does not let go in time (a frozen tab) has the lock stolen.
//
// Without Web Locks (a page served over plain http from another host is not a secure
// context) the server decides: a tab whose login is refused with "Device already
// connected" waits behind the banner, and "Use here" asks the holder the same way.

/** How long a tab waits for the holder to let go before it steals the lock. */
const LET_GO_WAIT = 3000;

export class Tabs {
  /**
   * @param {string} device this browser's device name
   * @param {object} handlers use() (this tab holds the session now: connect), letGo()
   *   (async: close the session cleanly, another tab takes it), elsewhere() (another tab
   *   holds it: show so), heard(message) (what other tabs say: `session`, `logout`)
   */
  constructor(device, handlers) {
    this.name = `parley.session.${device}`;
    this.handlers = handlers;
    this.locks = globalThis.navigator?.locks ?? null;
    this.channel = new BroadcastChannel(this.name);
    this.channel.onmessage = (e) => this.heard(e.data);
    this.holding = false;
    this.free = null; // releases the held lock
    this.session = 0; // counts sessions: a lock granted to an ended one is given back
    this.waiting = null; // aborts this tab's wait for the lock
    this.letGoDone = null;
    this.patience = 0; // "Device already connected" answers taken for a session just closing
  }

  /** A session begins in this tab: it holds the session unless another tab does. */
  start() {
    const session = ++this.session;
    this.patience = 0;
    if (!this.locks) return this.use();
    this.lock(session, { ifAvailable: true });
  }

  /** The session ended here (logged out): another tab may hold the next one. */
  stop() {
    this.session++;
    this.holding = false;
    this.waiting?.abort();
    this.free?.();
    this.free = null;
  }

  /** Tells the other tabs of this browser (`{type: 'session'}`, `{type: 'logout'}`). */
  say(message) {
    this.channel.postMessage(message);
  }

  /** "Use here": asks the holder to let go, then holds the session in this tab. */
  async takeOver() {
    const session = this.session;
    this.waiting?.abort();
    const waiting = new AbortController();
    this.waiting = waiting;
    this.say({ type: 'let-go' });
    const timer = setTimeout(() => waiting.abort('timeout'), LET_GO_WAIT);
    let granted;
    if (this.locks) {
      granted = await this.lock(session, { signal: waiting.signal });
    } else {
      // The holder says when its socket is closed (a holder that does not is not waited for:
      // the server turns down a second session).
      granted = await new Promise((resolve) => {
        this.letGoDone = () => resolve(true);
        waiting.signal.addEventListener('abort', () => resolve(waiting.signal.reason === 'timeout'));
      });
      this.letGoDone = null;
      // The holder's session may take a moment to end on the server: a few refusals are
      // answered by trying again (with the connection's back-off), then this tab gives up.
      this.patience = 3;
      if (granted && session === this.session) this.use();
    }
    clearTimeout(timer);
    if (this.waiting === waiting) this.waiting = null;
    // The holder did not let go in time (a frozen tab): the lock is taken from it. Not if
    // another tab asked meanwhile (the last to ask wins) or the session ended.
    if (!granted && waiting.signal.reason === 'timeout' && session === this.session) {
      await this.lock(session, { steal: true });
    }
  }

  /** Asks for the lock; resolves with whether it was granted (then this tab holds it). */
  lock(session, options) {
    return new Promise((resolve) => {
      let granted = false;
      this.locks.request(this.name, options, (lock) => {
        if (!lock) {
          resolve(false);
          if (session === this.session) this.elsewhere();
          return undefined;
        }
        // Granted to a session that has ended meanwhile: given straight back.
        if (session !== this.session) return resolve(false);
        granted = true;
        resolve(true);
        return new Promise((free) => {
          this.free = free;
          this.use();
        });
      }).catch(() => {
        if (!granted) return resolve(false);
        // Stolen by another tab while held: this one lets go at once.
        if (session === this.session && this.holding) this.letGo();
      });
    });
  }

  use() {
    this.holding = true;
    this.handlers.use();
  }

  elsewhere() {
    this.holding = false;
    this.handlers.elsewhere();
  }

  /** Another tab takes the session: close it cleanly here, then let that tab have it. */
  async letGo() {
    this.holding = false;
    const free = this.free;
    this.free = null;
    try {
      await this.handlers.letGo();
    } finally {
      free?.();
      this.say({ type: 'let-go-done' });
      this.handlers.elsewhere();
    }
  }

  heard(message) {
    switch (message?.type) {
      case 'let-go':
        // The last tab to ask wins: one waiting here gives up its own wait.
        this.waiting?.abort('another tab');
        if (this.holding) this.letGo();
        return;
      case 'let-go-done':
        this.letGoDone?.();
        return;
      default:
        this.handlers.heard(message);
    }
  }

  /** The server turned this tab's login down: the device is connected in another tab.
   * True if this tab should stop and wait (without Web Locks); with them, the holder of
   * the lock is this tab, so the other session is one just closing: try again (as also
   * just after "Use here" without them). */
  busy() {
    if (this.locks) return false;
    if (this.patience-- > 0) return false;
    this.elsewhere();
    return true;
  }
}
