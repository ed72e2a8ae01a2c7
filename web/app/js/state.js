// What the app knows: who is logged in, the conversations with their messages, and what
// was read. Messages are kept by id, so a message that arrives twice (a push and a history
// page, or a replay after a reconnect) is shown once.

const PAGE = 50;

export class Conversation {
  constructor(kind, name) {
    this.kind = kind; // 'room' | 'dm' | 'broadcast'
    this.name = name; // the room, the other user, or '*'
    this.key = Conversation.key(kind, name);
    this.id = null; // the server's conversation id, once known
    this.messages = []; // stored messages, oldest first
    this.ids = new Set();
    this.pending = []; // sent by this browser, not yet stored
    this.lastSeq = 0;
    this.readSeq = null;
    this.last = null; // the latest message, for the sidebar
    this.loaded = false; // the latest page was fetched
    this.complete = false; // nothing older exists
    this.loading = false;
    this.member = true;
  }

  static key(kind, name) {
    return `${kind}:${name}`;
  }

  get title() {
    if (this.kind === 'broadcast') return 'Everyone';
    return this.name;
  }

  /** The history target of this conversation. */
  get target() {
    return this.kind === 'broadcast' ? '*' : this.name;
  }

  get unread() {
    if (this.readSeq === null) return 0;
    return Math.max(0, this.lastSeq - this.readSeq);
  }

  /** Adds stored messages (any order, duplicates ignored); true if any was new. */
  add(messages) {
    let added = false;
    for (const m of messages) {
      if (this.ids.has(m.id)) continue;
      this.ids.add(m.id);
      this.messages.push(m);
      added = true;
      if (m.seq > this.lastSeq) this.lastSeq = m.seq;
      if (!this.last || m.id > this.last.id) this.last = m;
    }
    if (added) this.messages.sort((a, b) => a.id - b.id);
    return added;
  }

  /** Notes a message of a conversation whose history is not loaded (it will be in the
   * latest page when it is): the sidebar's last message and count move, nothing else. */
  touch(m) {
    if (m.seq > this.lastSeq) this.lastSeq = m.seq;
    if (!this.last || m.id > this.last.id) {
      this.last = m;
      return true;
    }
    return false;
  }

  /** Shows the message at `seq` as deleted (its words gone); true if it is here. */
  deleted(seq) {
    const m = this.messages.find((x) => x.seq === seq);
    if (m) Object.assign(m, { deleted: true, text: '' });
    if (this.last?.seq === seq) Object.assign(this.last, { deleted: true, text: '' });
    return Boolean(m);
  }

  /** Forgets the messages shown (another tab held the session meanwhile): the latest page
   * loads again when the conversation is shown. What waits to be sent stays. */
  forget() {
    this.messages = [];
    this.ids.clear();
    this.loaded = false;
    this.complete = false;
  }

  get oldestId() {
    return this.messages.length ? this.messages[0].id : null;
  }
}

export class State {
  constructor() {
    this.me = null;
    this.token = null;
    this.conversations = new Map();
    this.current = null; // key of the open conversation
    this.users = new Map(); // name -> {online, last_seen}
    this.contacts = [];
    this.blocked = new Set(); // the users this user blocks
    this.rooms = new Map(); // room -> its details (topic, role, ...), as ROOM_INFO says
    this.watched = ''; // the users whose presence the server pushes, joined
    this.read = {};
  }

  /** The conversation of `kind`/`name`, created (empty) if new. */
  conversation(kind, name) {
    const key = Conversation.key(kind, name);
    let c = this.conversations.get(key);
    if (!c) {
      c = new Conversation(kind, name);
      c.readSeq = this.read[key] ?? null;
      this.conversations.set(key, c);
    }
    return c;
  }

  /** The conversation a pushed or listed message belongs to. */
  conversationOf(kind, from, to) {
    if (kind === 'dm') return this.conversation('dm', from === this.me ? to : from);
    if (kind === 'room') return this.conversation('room', to);
    return this.conversation('broadcast', '*');
  }

  markRead(c, seq = c.lastSeq) {
    if (c.readSeq !== null && c.readSeq >= seq) return;
    c.readSeq = seq;
    this.read[c.key] = seq;
    this.saveRead();
  }

  loadRead() {
    try {
      this.read = JSON.parse(localStorage.getItem(`parley.read.${this.me}`) || '{}');
    } catch {
      this.read = {};
    }
  }

  saveRead() {
    clearTimeout(this.readTimer);
    this.readTimer = setTimeout(() => {
      localStorage.setItem(`parley.read.${this.me}`, JSON.stringify(this.read));
    }, 300);
  }

  /** Conversations for the sidebar, most recent first. */
  sorted(kind) {
    return [...this.conversations.values()]
      .filter((c) => (kind === 'room' ? c.kind !== 'dm' : c.kind === 'dm') && c.member)
      .sort((a, b) => (b.last?.id ?? 0) - (a.last?.id ?? 0) || a.title.localeCompare(b.title));
  }

  totalUnread() {
    let n = 0;
    for (const c of this.conversations.values()) if (c.member) n += c.unread;
    return n;
  }
}

export { PAGE };
