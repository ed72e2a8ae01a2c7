// The app: login, the session over the WebSocket, and what each control does.

import { Connection, DEVICE_BUSY } from './conn.js';
import { State, PAGE } from './state.js';
import * as view from './view.js';
import { $, toast } from './dom.js';
import { upload, download, save } from './files.js';
import { toMs } from './format.js';
import { Tabs } from './tabs.js';

const state = new State();
let conn = null;
let mode = 'login';
let nextLocal = 1;
const acks = new Map();
let ackTimer = null;
let bannerTimer = null;
let members = []; // the open room's members, as the panel shows them
const images = new Map();
let tabs = null; // which tab of this browser holds the session (tabs.js)

// ---------------------------------------------------------------- login

function showLogin(error = '') {
  $('app').hidden = true;
  $('elsewhere').hidden = true;
  $('banner').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = error;
  $('login-name').focus();
}

function setMode(m) {
  mode = m;
  $('tab-login').setAttribute('aria-selected', String(m === 'login'));
  $('tab-register').setAttribute('aria-selected', String(m === 'register'));
  $('login-submit').textContent = m === 'login' ? 'Log in' : 'Create account';
  $('login-password').autocomplete = m === 'login' ? 'current-password' : 'new-password';
}

/** This browser's device name (a device of the account, with its own token and cursor). */
function deviceName() {
  let name = localStorage.getItem('parley.device');
  if (!name) {
    name = `web-${Math.random().toString(36).slice(2, 10)}`;
    localStorage.setItem('parley.device', name);
  }
  return name;
}

async function submitLogin(e) {
  e.preventDefault();
  const name = $('login-name').value.trim();
  const password = $('login-password').value;
  $('login-error').textContent = '';
  $('login-submit').disabled = true;
  try {
    const data = await Connection.once(async (c) => {
      if (mode === 'register') await c.call('REGISTER', { data: name, password });
      return c.call('LOGIN', { data: name, password, device: deviceName(), want_token: true });
    });
    localStorage.setItem('parley.session', JSON.stringify({ name, token: data.token }));
    $('login-password').value = '';
    startSession(name, data.token);
    tabs.say({ type: 'session' });
  } catch (err) {
    $('login-error').textContent = err.message;
  } finally {
    $('login-submit').disabled = false;
  }
}

// ---------------------------------------------------------------- the session

function startSession(name, token) {
  state.me = name;
  state.token = token;
  state.loadRead();
  $('login').hidden = true;
  $('app').hidden = false;
  $('me-name').textContent = name;
  view.sidebar(state, open);
  conn = new Connection({
    onStatus: status,
    onEvent: event,
    onRefused: (why) => endSession(`${why}: please log in again.`),
    onBusy: () => tabs.busy(),
  });
  tabs.start();
}

// ---------------------------------------------------------------- one tab at a time

/** This tab holds the session (tabs.js): show the app and connect. */
function useHere() {
  if (!conn) return;
  $('elsewhere').hidden = true;
  $('app').hidden = false;
  // Another tab may have read and written meanwhile: what it read is read here too.
  state.loadRead();
  for (const c of state.conversations.values()) {
    const read = state.read[c.key];
    if (read !== undefined && (c.readSeq === null || read > c.readSeq)) c.readSeq = read;
  }
  refresh();
  conn.start(state.token);
}

/** Another tab takes the session: send the acks, close the socket cleanly. */
async function letGo() {
  flushAcks();
  await conn?.release();
}

/** Another tab holds the session: say so, with a button that takes it over. */
function elsewhere() {
  if (!conn) return;
  conn.stop();
  // What this tab shows is stale from now on: it loads again when the session is back.
  for (const c of state.conversations.values()) c.forget();
  const c = current();
  if (c) renderMessages(c);
  $('app').hidden = true;
  $('banner').hidden = true;
  $('elsewhere').hidden = false;
  $('use-here').focus();
}

/** What another tab of this browser says: it logged in, or out. */
function heard(message) {
  if (message?.type === 'logout' && conn) endSession('You logged out in another tab.');
  if (message?.type === 'session' && !conn) resumeSaved();
}

function endSession(why = '') {
  tabs.stop();
  conn?.stop();
  conn = null;
  localStorage.removeItem('parley.session');
  state.watched = '';
  location.hash = '';
  state.conversations.clear();
  state.current = null;
  showLogin(why);
}

async function logout() {
  $('menu').hidden = true;
  try {
    // Revokes this browser's token; the server then closes the socket.
    await conn.request('LOGOUT');
  } catch {
    /* closed by the server */
  }
  endSession();
  tabs.say({ type: 'logout' });
}

function status(s, detail) {
  $('me-status').className = `dot${s === 'online' ? ' online' : ''}`;
  $('me-status').title = s;
  clearInterval(bannerTimer);
  const banner = $('banner');
  if (s === 'online') {
    banner.hidden = true;
    online();
  } else if (s === 'stopped') {
    banner.hidden = true;
  } else if (s === 'offline') {
    const closing = detail.why === DEVICE_BUSY;
    const show = () => {
      const secs = Math.max(0, Math.round((detail.retryAt - Date.now()) / 1000));
      const what = closing ? 'This browser\'s previous session is still closing.' : 'You are offline.';
      banner.replaceChildren(`${what} Reconnecting in ${secs} s…`,
        Object.assign(document.createElement('button'), { type: 'button', textContent: 'Retry now', onclick: () => conn.soon() }));
    };
    show();
    banner.hidden = false;
    bannerTimer = setInterval(show, 1000);
  } else if (!banner.hidden) {
    banner.textContent = 'Reconnecting…';
  }
}

/** Connected and subscribed: what this device missed is arriving; refresh the lists. */
async function online() {
  // A new session watches nothing yet: what is on screen is watched again below.
  state.watched = '';
  try {
    await Promise.all([conversations(), contacts(), blocks()]);
  } catch (e) {
    toast(e.message, 'error');
  }
  const c = current();
  if (c && !c.loaded) load(c);
  if (c?.kind === 'room') roomInfo(c);
  // Messages written while offline go now, in order.
  for (const conv of state.conversations.values()) {
    for (const p of [...conv.pending]) if (p.status === 'queued') deliver(conv, p);
  }
}

/**
 * Watches the presence of what the app shows (the people of the direct conversations and
 * the contacts, then the open room's members): the server pushes when each comes and
 * goes, so nothing is polled. Sent again only when the list changes.
 */
async function watch() {
  if (!conn || conn.status !== 'online') return;
  const names = new Set([...state.conversations.values()].filter((c) => c.kind === 'dm').map((c) => c.name));
  for (const c of state.contacts) names.add(c.name);
  if (!$('members').hidden) for (const m of members) if (names.size < WATCHED) names.add(m.name);
  names.delete(state.me);
  const list = [...names].sort().slice(0, WATCHED);
  const key = list.join('\n');
  if (key === state.watched) return;
  state.watched = key;
  try {
    for (const u of await conn.call('WATCH', { users: list })) {
      state.users.set(u.name, { online: u.online, last_seen: u.last_seen });
    }
  } catch {
    state.watched = '';
  }
  refresh();
}

/** Most users watched (the server's default `max_watched_users`). */
const WATCHED = 256;

async function blocks() {
  state.blocked = new Set(await conn.call('BLOCKS'));
}

/** The room's topic, owner, operators and this user's role in it. */
async function roomInfo(c) {
  try {
    state.rooms.set(c.name, await conn.call('ROOM_INFO', { room: c.name }));
  } catch {
    return;
  }
  if (current() === c) {
    refresh();
    renderMessages(c);
    if (!$('members').hidden) renderMembers();
  }
}

/** The conversations this user belongs to, with their last message. */
async function conversations() {
  const list = await conn.call('CONVERSATIONS');
  const seen = new Set();
  for (const item of list) {
    const c = state.conversation(item.kind, item.name);
    seen.add(c.key);
    c.id = item.conversation;
    c.member = true;
    if (item.last_seq > c.lastSeq) c.lastSeq = item.last_seq;
    // A browser that never read here starts where this device's cursor is.
    if (c.readSeq === null) state.markRead(c, item.cursor);
    if (item.last) {
      const last = normalize(item.last);
      if (!c.last || last.id > c.last.id) c.last = last;
    }
  }
  for (const c of state.conversations.values()) {
    if (c.kind === 'room' && !seen.has(c.key)) c.member = false;
  }
  if (!state.current && location.hash) {
    const c = state.conversations.get(decodeURIComponent(location.hash.slice(1)));
    if (c) open(c);
  }
  refresh();
  watch();
}

async function contacts() {
  state.contacts = await conn.call('CONTACTS');
  for (const c of state.contacts) state.users.set(c.name, { online: c.online, last_seen: c.last_seen });
  watch();
  const asking = state.contacts.filter((c) => c.state === 'pending').length;
  $('contacts-badge').hidden = asking === 0;
  $('contacts-badge').textContent = String(asking);
  if ($('contacts-dialog').open) renderContacts();
}

/** A message as the app keeps it, from a push or a history item. */
function normalize(m) {
  const received = m.received_at ? Date.parse(m.received_at) : Date.now();
  return { id: m.id, seq: m.seq, conversation: m.conversation, from: m.from, text: m.text, ms: toMs(m.time, received), deleted: Boolean(m.deleted) };
}

function event(e) {
  switch (e.event) {
    case 'message': return received(e);
    case 'joined':
    case 'left':
      if (e.user === state.me) conversations().catch(() => {});
      else if (current()?.name === e.room && !$('members').hidden) showMembers();
      return;
    case 'disconnected': {
      const u = state.users.get(e.user);
      if (u) Object.assign(u, { online: false, last_seen: Date.now() });
      return refresh();
    }
    case 'online':
    case 'offline':
      state.users.set(e.user, { online: e.event === 'online', last_seen: e.last_seen ?? null });
      refresh();
      if (!$('members').hidden) renderMembers();
      return;
    case 'deleted': return deletedMessage(e);
    case 'moderation': return moderation(e);
    case 'contact_requested':
      toast(`${e.user} wants to be your contact`);
      return contacts().catch(() => {});
    case 'contact_accepted':
      toast(`${e.user} accepted your contact request`);
      return contacts().catch(() => {});
    case 'contact_declined':
    case 'contact_removed':
      return contacts().catch(() => {});
    default:
  }
}

function received(e) {
  const c = state.conversationOf(e.kind, e.from, e.to);
  c.id = e.conversation;
  c.member = true;
  // A conversation new to this browser: everything before this message counts as read.
  if (c.readSeq === null) state.markRead(c, e.seq - 1);
  const m = normalize(e);
  // A conversation whose history was never fetched keeps only its last message: the latest
  // page will hold this one, and a page beside a stray newer message would leave a gap.
  const known = c.id !== null || c.lastSeq > 0;
  const isNew = c.loaded || c.loading ? c.add([m]) : c.touch(m);
  ack(e.conversation, e.seq);
  if (!known && c.kind === 'dm') watch();
  if (!isNew) return;
  const u = state.users.get(e.from);
  if (u && !u.online) u.online = true;
  const isOpen = state.current === c.key;
  if (e.from === state.me) {
    if (c.readSeq !== null && c.readSeq >= e.seq - 1) state.markRead(c, e.seq);
  } else if (isOpen && !document.hidden && atBottom()) {
    state.markRead(c, e.seq);
  } else if (document.hidden || !isOpen) {
    notify(c, m);
  }
  if (isOpen) renderMessages(c, true);
  refresh();
}

/** A message was deleted: it shows as deleted wherever it is. */
function deletedMessage(e) {
  const c = state.conversationOf(e.kind, e.from, e.to);
  c.deleted(e.deleted.seq);
  // The deletion has a place of its own in the conversation: nothing to read there.
  const caughtUp = c.readSeq !== null && c.readSeq >= e.seq - 1;
  if (e.seq > c.lastSeq) c.lastSeq = e.seq;
  if (caughtUp) state.markRead(c, e.seq);
  ack(e.conversation, e.seq);
  if (state.current === c.key) renderMessages(c);
  refresh();
}

/** Something an operator did in a room (or to this user in one). */
function moderation(e) {
  const c = state.conversation('room', e.room);
  const me = e.user === state.me;
  if (e.change === 'invited') return toast(`${e.by} invited you to ${e.room}`);
  if (e.change === 'deleted' || (me && (e.change === 'kicked' || e.change === 'banned'))) {
    const what = e.change === 'deleted' ? `${e.room} was deleted` : `${e.by} ${e.change} you from ${e.room}`;
    toast(what, 'error');
    c.member = false;
    state.rooms.delete(e.room);
    if (state.current === c.key) closeConversation();
    return refresh();
  }
  if (e.change === 'topic' && state.current === c.key && e.topic) toast(`Topic: ${e.topic}`);
  if (c.member) roomInfo(c);
  if (state.current === c.key && !$('members').hidden) showMembers();
}

/** Acks what was received, a few times a second: the device's cursor moves past it. */
function ack(conversation, seq) {
  if ((acks.get(conversation) ?? 0) < seq) acks.set(conversation, seq);
  if (!ackTimer) ackTimer = setTimeout(flushAcks, 200);
}

function flushAcks() {
  clearTimeout(ackTimer);
  ackTimer = null;
  for (const [conversation, seq] of acks) conn?.send('ACK', { conversation, seq });
  acks.clear();
}

function notify(c, m) {
  if (!('Notification' in window) || Notification.permission !== 'granted' || !document.hidden) return;
  const mention = m.text.includes(`@${state.me}`);
  if (c.kind !== 'dm' && !mention) return;
  const n = new Notification(c.kind === 'dm' ? m.from : `${m.from} in ${c.title}`, { body: m.text.slice(0, 200), tag: c.key });
  n.onclick = () => {
    window.focus();
    open(c);
    n.close();
  };
}

// ---------------------------------------------------------------- conversations

const current = () => (state.current ? state.conversations.get(state.current) : null);

function refresh() {
  view.sidebar(state, open);
  const c = current();
  view.header(state, c);
  const n = state.totalUnread();
  document.title = n ? `(${n}) parley` : 'parley';
}

const drafts = new Map();

function open(c) {
  // What was typed stays with its conversation.
  if (state.current && state.current !== c.key) drafts.set(state.current, $('input').value);
  if (state.current !== c.key) {
    $('input').value = drafts.get(c.key) ?? '';
    grow();
  }
  state.current = c.key;
  history.replaceState(null, '', `#${encodeURIComponent(c.key)}`);
  $('app').classList.add('show-conv');
  $('app').classList.remove('show-members');
  $('members').hidden = true;
  $('toggle-members').setAttribute('aria-expanded', 'false');
  refresh();
  renderMessages(c);
  scrollToBottom();
  if (!c.loaded) load(c);
  else state.markRead(c);
  if (c.kind === 'room') roomInfo(c);
  refresh();
  if (window.matchMedia('(min-width: 721px)').matches) $('input').focus();
}

/** The latest page of `c`. */
async function load(c) {
  if (c.loading || !conn || conn.status !== 'online') return;
  c.loading = true;
  renderMessages(c);
  try {
    const items = await conn.call('HISTORY', { target: c.target, limit: PAGE });
    c.add(items.map(normalize));
    c.loaded = true;
    c.complete = items.length < PAGE;
  } catch (e) {
    toast(e.message, 'error');
  } finally {
    c.loading = false;
  }
  if (state.current === c.key) {
    renderMessages(c);
    scrollToBottom();
    state.markRead(c);
    refresh();
  }
}

/** The page before the oldest message shown, keeping the view where it was. */
async function older(c) {
  if (c.loading || c.complete || !c.loaded || conn?.status !== 'online') return;
  c.loading = true;
  const box = $('messages');
  const before = box.scrollHeight - box.scrollTop;
  try {
    const items = await conn.call('HISTORY', { target: c.target, limit: PAGE, before: c.oldestId });
    c.add(items.map(normalize));
    c.complete = items.length < PAGE;
  } catch (e) {
    toast(e.message, 'error');
  } finally {
    c.loading = false;
  }
  if (state.current === c.key) {
    renderMessages(c);
    box.scrollTop = box.scrollHeight - before;
  }
}

const atBottom = () => {
  const box = $('messages');
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
};

function scrollToBottom() {
  const box = $('messages');
  box.scrollTop = box.scrollHeight;
}

function renderMessages(c, follow = false) {
  const stick = follow && atBottom();
  const role = c.kind === 'room' ? state.rooms.get(c.name)?.role : null;
  const canDelete = (m) => m.from === state.me || (c.kind === 'room' && view.moderates(role));
  const reveal = (m) => {
    m.revealed = true;
    renderMessages(c);
  };
  const remove = (m) => deleteMessage(c, m);
  view.messages(state, c, { retry, fetchImage, download: downloadFile, canDelete, reveal, remove });
  if (stick) scrollToBottom();
}

/** Deletes a message: the server keeps a tombstone, every device shows it deleted. */
async function deleteMessage(c, m) {
  try {
    await conn.call('DELETE', { target: c.target, seq: m.seq });
    c.deleted(m.seq);
    if (state.current === c.key) renderMessages(c);
    refresh();
  } catch (e) {
    toast(e.message, 'error');
  }
}

// ---------------------------------------------------------------- sending

function sendText() {
  const c = current();
  const input = $('input');
  const text = input.value.trim();
  if (!c || !text) return;
  input.value = '';
  grow();
  const p = { local: nextLocal++, from: state.me, text, ms: Date.now(), status: 'sending' };
  p.command = c.kind === 'room' ? ['SAY', { room: c.name, data: text }]
    : c.kind === 'dm' ? ['DM', { to: c.name, data: text }] : ['MESSAGE', { data: text }];
  c.pending.push(p);
  deliver(c, p);
}

/** Sends a pending message; it shows as sending until the server has stored it. */
async function deliver(c, p) {
  if (!conn || conn.status !== 'online') {
    p.status = 'queued';
    return show(c);
  }
  p.status = 'sending';
  show(c);
  let answer;
  try {
    answer = await conn.request(...p.command);
  } catch {
    // Sent, but the connection dropped before the answer: it may or may not be stored.
    Object.assign(p, { status: 'failed', error: 'the connection dropped before the server confirmed it', retry: true });
    return show(c);
  }
  if (!answer.success) {
    Object.assign(p, { status: 'failed', error: answer.message, retry: !/member|not found|contact/i.test(answer.message) });
    return show(c);
  }
  c.pending = c.pending.filter((x) => x !== p);
  const stored = answer.data && typeof answer.data === 'object' ? answer.data : null;
  if (stored?.id) {
    c.id = stored.conversation;
    c.add([{ id: stored.id, seq: stored.seq, conversation: stored.conversation, from: state.me, text: p.text, ms: p.ms }]);
    if (c.readSeq === null || c.readSeq >= stored.seq - 1) state.markRead(c, stored.seq);
  }
  c.member = true;
  show(c);
  refresh();
}

function show(c) {
  if (state.current === c.key) {
    renderMessages(c);
    scrollToBottom();
  }
}

function retry(p) {
  const c = [...state.conversations.values()].find((x) => x.pending.includes(p));
  if (c) deliver(c, p);
}

// ---------------------------------------------------------------- files

async function sendFiles(files) {
  const c = current();
  if (!c || c.kind === 'broadcast') return;
  for (const file of files) {
    const row = view.uploadRow(file.name);
    try {
      const sha256 = await upload(state.token, file, row.progress);
      row.done();
      const type = file.type || 'application/octet-stream';
      const text = `[file name="${file.name.replace(/"/g, "'")}" size=${file.size} type=${type} sha256=${sha256}]`;
      const target = c.kind === 'room' ? { room: c.name } : { to: c.name };
      const p = { local: nextLocal++, from: state.me, text, ms: Date.now(), status: 'sending' };
      p.command = ['SEND_FILE', { ...target, sha256, name: file.name, type }];
      c.pending.push(p);
      await deliver(c, p);
    } catch (e) {
      row.failed(e.message);
    }
  }
}

function fetchImage(file, img) {
  let url = images.get(file.sha256);
  if (url) {
    img.src = url;
    return;
  }
  download(state.token, file).then((blob) => {
    url = URL.createObjectURL(blob);
    images.set(file.sha256, url);
    img.src = url;
  }).catch(() => { img.alt = `${file.name} (could not load)`; });
}

async function downloadFile(file, button) {
  button.disabled = true;
  try {
    const blob = await download(state.token, file, (d, t) => {
      button.textContent = `Downloading… ${Math.floor((100 * d) / (t || 1))} %`;
    });
    save(blob, file.name);
    button.textContent = 'Downloaded ✓';
  } catch (e) {
    button.textContent = 'Download';
    toast(e.message, 'error');
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- rooms, DMs, members, contacts

async function openJoin() {
  $('join-error').textContent = '';
  $('join-name').value = '';
  $('join-dialog').showModal();
  $('join-name').focus();
  try {
    const rooms = await conn.call('ROOMS');
    view.userList($('room-list'), rooms.map((r) => ({ name: r.name, online: r.online > 0, label: `${r.name} · ${r.members} members` })),
      (r) => [['Join', () => join(r.name)]], 'No rooms yet: name one to create it.');
  } catch {
    /* offline: typing a name still works once back */
  }
}

async function join(name) {
  try {
    await conn.call('JOIN', { room: name });
    $('join-dialog').close();
    const c = state.conversation('room', name);
    c.member = true;
    c.loaded = false;
    await conversations();
    open(c);
  } catch (e) {
    $('join-error').textContent = e.message;
  }
}

async function leave() {
  const c = current();
  if (!c || c.kind !== 'room' || !confirm(`Leave ${c.name}?`)) return;
  try {
    await conn.call('LEAVE', { room: c.name });
    c.member = false;
    closeConversation();
    refresh();
  } catch (e) {
    toast(e.message, 'error');
  }
}

/** No conversation open any more (left, kicked, or the room deleted). */
function closeConversation() {
  state.current = null;
  history.replaceState(null, '', '#');
  $('app').classList.remove('show-conv', 'show-members');
  $('members').hidden = true;
  view.messages(state, { messages: [], pending: [], loading: false, complete: false, kind: 'room' }, {});
}

async function search(input, list, buttons) {
  const prefix = input.value.trim();
  try {
    const found = prefix ? await conn.call('SEARCH', { data: prefix, limit: 20 }) : [];
    view.userList(list, found.filter((u) => u.name !== state.me), buttons, prefix ? 'Nobody by that name' : 'Type the start of a name');
  } catch (e) {
    toast(e.message, 'error');
  }
}

function openDm() {
  $('dm-search').value = '';
  view.userList($('dm-results'), [], () => [], 'Type the start of a name');
  $('dm-dialog').showModal();
  $('dm-search').focus();
}

function startDm(name) {
  $('dm-dialog').close();
  const c = state.conversation('dm', name);
  c.member = true;
  open(c);
  watch();
}

async function showMembers() {
  const c = current();
  if (!c || c.kind !== 'room') return;
  try {
    members = await conn.call('MEMBERS', { room: c.name });
  } catch (e) {
    return toast(e.message, 'error');
  }
  renderMembers();
  watch();
}

/** The open room's members, each with the menu of what this user may do to them. */
function renderMembers() {
  const c = current();
  if (!c || c.kind !== 'room') return;
  const info = state.rooms.get(c.name);
  const rank = (name) => {
    if (name === info?.owner) return 2;
    return info?.operators?.includes(name) ? 1 : 0;
  };
  const mine = { member: 0, operator: 1, owner: 2, 'server-operator': 3 }[info?.role] ?? 0;
  const act = (command, user) => async () => {
    try {
      await conn.call(command, { room: c.name, user });
      await roomInfo(c);
      showMembers();
    } catch (e) {
      toast(e.message, 'error');
    }
  };
  const menu = (m) => {
    if (m.name === state.me || m.name === 'anonymous') return [];
    const items = [];
    if (mine >= 1 && rank(m.name) < mine) {
      const muted = info?.muted?.includes(m.name);
      items.push(['Kick', act('KICK', m.name)], ['Ban', act('BAN', m.name)],
        [muted ? 'Unmute' : 'Mute', act(muted ? 'UNMUTE' : 'MUTE', m.name)]);
      if (mine >= 2) items.push(rank(m.name) === 1 ? ['Remove operator', act('DEOP', m.name)] : ['Make operator', act('OP', m.name)]);
    }
    const blocked = state.blocked.has(m.name);
    items.push([blocked ? 'Unblock' : 'Block', () => block(m.name, !blocked)]);
    return items;
  };
  view.members(state, members, c.name, menu);
}

/** Blocks (or unblocks) a user: no DMs or contact requests from them; their room messages
 * are folded away here. */
async function block(name, on) {
  try {
    await conn.call(on ? 'BLOCK' : 'UNBLOCK', { user: name });
    if (on) state.blocked.add(name);
    else state.blocked.delete(name);
    toast(on ? `${name} is blocked` : `${name} is no longer blocked`);
  } catch (e) {
    return toast(e.message, 'error');
  }
  const c = current();
  refresh();
  if (c) renderMessages(c);
  if (!$('members').hidden) renderMembers();
}

function openTopic() {
  const c = current();
  if (!c || c.kind !== 'room') return;
  $('topic-error').textContent = '';
  $('topic-input').value = state.rooms.get(c.name)?.topic ?? '';
  $('topic-dialog').showModal();
  $('topic-input').focus();
}

async function saveTopic() {
  const c = current();
  if (!c) return;
  try {
    await conn.call('TOPIC', { room: c.name, topic: $('topic-input').value.trim() });
    $('topic-dialog').close();
    await roomInfo(c);
  } catch (e) {
    $('topic-error').textContent = e.message;
  }
}

function toggleMembers() {
  const hidden = !$('members').hidden;
  $('members').hidden = hidden;
  $('app').classList.toggle('show-members', !hidden);
  $('toggle-members').setAttribute('aria-expanded', String(!hidden));
  if (!hidden) showMembers();
  else watch();
}

function renderContacts() {
  const by = (s) => state.contacts.filter((c) => c.state === s);
  const act = (command, name) => async () => {
    try {
      await conn.call(command, { to: name });
      await contacts();
    } catch (e) {
      toast(e.message, 'error');
    }
  };
  const requests = [...by('pending').map((c) => ({ ...c, label: `${c.name} wants to be your contact` })),
    ...by('requested').map((c) => ({ ...c, label: `${c.name} (asked, waiting)` }))];
  view.userList($('contact-requests'), requests, (c) => (c.state === 'pending'
    ? [['Accept', act('CONTACT_ACCEPT', c.name)], ['Decline', act('CONTACT_DECLINE', c.name)]]
    : [['Cancel', act('CONTACT_REMOVE', c.name)]]), 'No open requests');
  view.userList($('contact-list'), by('accepted'), (c) => [['Message', () => { $('contacts-dialog').close(); startDm(c.name); }],
    ['Remove', act('CONTACT_REMOVE', c.name)]], 'No contacts yet');
  const known = new Set(state.contacts.map((c) => c.name));
  const addButtons = (u) => (known.has(u.name) ? [] : [['Add', act('CONTACT_REQUEST', u.name)]]);
  search($('contact-search'), $('contact-results'), addButtons);
}

async function openContacts() {
  $('contact-search').value = '';
  $('contacts-dialog').showModal();
  $('contact-search').focus();
  try {
    await contacts();
  } catch {
    /* offline */
  }
  renderContacts();
}

// ---------------------------------------------------------------- wiring

function grow() {
  const input = $('input');
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}

function debounce(f, ms) {
  let t;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => f(...args), ms);
  };
}

function wire() {
  $('tab-login').onclick = () => setMode('login');
  $('tab-register').onclick = () => setMode('register');
  $('login-form').onsubmit = submitLogin;
  $('composer').onsubmit = (e) => {
    e.preventDefault();
    sendText();
  };
  $('input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendText();
    }
  });
  $('input').addEventListener('input', grow);
  $('attach').onclick = () => $('file-input').click();
  $('file-input').onchange = () => {
    sendFiles([...$('file-input').files]);
    $('file-input').value = '';
  };
  const pane = $('conversation');
  let depth = 0;
  pane.addEventListener('dragenter', (e) => {
    if (!current() || !e.dataTransfer?.types.includes('Files')) return;
    depth++;
    $('drop').hidden = false;
  });
  pane.addEventListener('dragleave', () => {
    if (--depth <= 0) { depth = 0; $('drop').hidden = true; }
  });
  pane.addEventListener('dragover', (e) => e.preventDefault());
  pane.addEventListener('drop', (e) => {
    e.preventDefault();
    depth = 0;
    $('drop').hidden = true;
    if (e.dataTransfer?.files.length) sendFiles([...e.dataTransfer.files]);
  });
  $('messages').addEventListener('scroll', () => {
    const c = current();
    if (!c) return;
    if ($('messages').scrollTop < 120) older(c);
    if (atBottom() && c.unread && !document.hidden) {
      state.markRead(c);
      refresh();
    }
  });
  document.addEventListener('visibilitychange', () => {
    const c = current();
    if (!document.hidden && c && atBottom()) {
      state.markRead(c);
      refresh();
    }
  });
  $('back').onclick = () => {
    $('app').classList.remove('show-conv', 'show-members');
    state.current = null;
    refresh();
  };
  $('toggle-members').onclick = toggleMembers;
  $('edit-topic').onclick = openTopic;
  $('topic-form').onsubmit = (e) => {
    if (e.submitter?.value !== 'save') return;
    e.preventDefault();
    saveTopic();
  };
  $('block').onclick = () => {
    const c = current();
    if (c?.kind === 'dm') block(c.name, !state.blocked.has(c.name));
  };
  $('leave').onclick = leave;
  $('open-join').onclick = openJoin;
  $('join-form').onsubmit = (e) => {
    if (e.submitter?.value !== 'join') return;
    e.preventDefault();
    join($('join-name').value.trim());
  };
  $('open-dm').onclick = openDm;
  const dmButtons = (u) => [['Message', () => startDm(u.name)]];
  $('dm-search').addEventListener('input', debounce(() => search($('dm-search'), $('dm-results'), dmButtons), 200));
  $('open-contacts').onclick = openContacts;
  $('contact-search').addEventListener('input', debounce(renderContacts, 200));
  $('open-menu').onclick = () => {
    const menu = $('menu');
    menu.hidden = !menu.hidden;
    $('open-menu').setAttribute('aria-expanded', String(!menu.hidden));
    if (!menu.hidden) menu.querySelector('button').focus();
  };
  $('menu').addEventListener('keydown', (e) => {
    if (e.key === 'Escape') { $('menu').hidden = true; $('open-menu').focus(); }
  });
  $('logout').onclick = logout;
  $('use-here').onclick = () => tabs.takeOver();
  $('enable-notifications').onclick = async () => {
    $('menu').hidden = true;
    if (!('Notification' in window)) return toast('This browser has no notifications', 'error');
    const answer = await Notification.requestPermission();
    toast(answer === 'granted' ? 'Notifications on for direct messages and mentions' : 'Notifications are blocked');
  };
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && !$('members').hidden) toggleMembers();
  });
}

/** Starts the session this browser keeps; false if there is none. */
function resumeSaved() {
  let saved = null;
  try {
    saved = JSON.parse(localStorage.getItem('parley.session') || 'null');
  } catch {
    saved = null;
  }
  if (!saved?.token) return false;
  startSession(saved.name, saved.token);
  return true;
}

function boot() {
  wire();
  tabs = new Tabs(deviceName(), { use: useHere, letGo, elsewhere, heard });
  if (!resumeSaved()) showLogin();
}

boot();
