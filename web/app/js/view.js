// Rendering: the sidebar, the conversation, members, dialogs. Text is always set as text.

import { h, $, fill, icon } from './dom.js';
import { timeOf, fullTime, dayKey, dayLabel, ago, bytes, parseFile, isImage } from './format.js';

/** The sidebar's lists. `open(c)` opens a conversation. */
export function sidebar(state, open) {
  const item = (c) => {
    const current = state.current === c.key;
    const unread = c.unread;
    const user = c.kind === 'dm' ? state.users.get(c.name) : null;
    const last = c.last ? `${c.last.from === state.me ? 'You' : c.last.from}: ${preview(c.last.text)}` : 'No messages yet';
    const label = `${c.title}${unread ? `, ${unread} unread` : ''}`;
    return h('li', {},
      h('button', {
        type: 'button', class: unread ? 'unread' : '', 'aria-current': current ? 'true' : 'false',
        'aria-label': label, dataset: { key: c.key }, onclick: () => open(c),
      },
      h('span', { class: 'conv-icon', 'aria-hidden': 'true' }, initial(c),
        user ? h('span', { class: `dot${user.online ? ' online' : ''}` }) : null),
      h('span', { class: 'conv-name' }, c.title),
      unread ? h('span', { class: 'badge', 'aria-hidden': 'true' }, String(unread)) : h('span'),
      h('span', { class: 'conv-last' }, last)));
  };
  const rooms = state.sorted('room');
  const dms = state.sorted('dm');
  fill($('rooms'), rooms.length ? rooms.map(item) : h('li', { class: 'none' }, 'No rooms yet: join or create one with +'));
  fill($('dms'), dms.length ? dms.map(item) : h('li', { class: 'none' }, 'No direct messages yet'));
}

function initial(c) {
  if (c.kind === 'broadcast') return '*';
  if (c.kind === 'room') return '#';
  return [...c.name][0]?.toUpperCase() ?? '?';
}

function preview(text) {
  const file = parseFile(text);
  const t = file ? `File: ${file.name}` : text;
  return t.replace(/\s+/g, ' ').slice(0, 80);
}

/** The open conversation's header. */
export function header(state, c) {
  $('conv-name').textContent = c ? c.title : 'Welcome';
  let detail = '';
  if (c?.kind === 'dm') {
    const u = state.users.get(c.name);
    if (u?.online) detail = 'online';
    else if (u?.last_seen) detail = `last seen ${ago(u.last_seen)}`;
  } else if (c?.kind === 'room') {
    detail = state.rooms.get(c.name)?.topic || 'room';
  } else if (c?.kind === 'broadcast') {
    detail = 'everyone on this server';
  }
  $('conv-detail').textContent = detail;
  const role = c?.kind === 'room' ? state.rooms.get(c.name)?.role : null;
  $('edit-topic').hidden = !moderates(role);
  $('block').hidden = c?.kind !== 'dm';
  if (c?.kind === 'dm') $('block').textContent = state.blocked.has(c.name) ? 'Unblock' : 'Block';
  $('toggle-members').hidden = c?.kind !== 'room';
  $('leave').hidden = c?.kind !== 'room';
  $('composer').hidden = !c;
  $('attach').hidden = c?.kind === 'broadcast';
}

/**
 * The messages of `c`: day separators, sender and local time, pending ones last.
 * `actions` has retry(p), fetchImage(file, img), download(file, button).
 */
export function messages(state, c, actions) {
  const box = $('messages');
  const children = [];
  if (c.loading) children.push(h('p', { class: 'older' }, 'Loading…'));
  else if (c.complete && c.messages.length) children.push(h('p', { class: 'older' }, 'This is the beginning of the conversation.'));
  let day = null;
  let prev = null;
  const all = [...c.messages, ...c.pending];
  for (const m of all) {
    const key = dayKey(m.ms);
    if (key !== day) {
      day = key;
      prev = null;
      children.push(h('div', { class: 'day', role: 'separator' }, dayLabel(m.ms)));
    }
    const grouped = prev && prev.from === m.from && m.ms - prev.ms < 5 * 60000;
    children.push(message(state, m, grouped, actions));
    prev = m;
  }
  if (!all.length && !c.loading) {
    children.push(h('p', { class: 'empty' }, c.kind === 'dm' ? `This is the start of your conversation with ${c.name}.` : 'No messages yet. Say hello!'));
  }
  fill(box, children);
}

/** Whether a room role may moderate (set the topic, delete others' messages, kick...). */
export function moderates(role) {
  return role === 'operator' || role === 'owner' || role === 'server-operator';
}

function message(state, m, grouped, actions) {
  const mine = m.from === state.me;
  const mention = !mine && state.me && m.text.includes(`@${state.me}`);
  const classes = ['msg', mine && 'mine', mention && 'mention', m.status === 'failed' && 'failed',
    m.status && m.status !== 'sent' && 'pending'].filter(Boolean).join(' ');
  const hidden = !mine && !m.deleted && !m.revealed && state.blocked.has(m.from);
  const file = m.deleted || hidden ? null : parseFile(m.text);
  let body;
  if (m.deleted) body = h('div', { class: 'text deleted' }, 'message deleted');
  else if (hidden) {
    body = h('div', { class: 'text blocked' }, 'Message from a blocked user',
      h('button', { type: 'button', onclick: () => actions.reveal(m) }, 'Show'));
  } else body = file ? fileBox(file, actions) : h('div', { class: 'text' }, linked(m.text));
  const remove = !m.deleted && m.seq && actions.canDelete?.(m)
    ? h('button', { type: 'button', class: 'delete', 'aria-label': `Delete message from ${m.from}`, onclick: () => actions.remove(m) }, 'Delete')
    : null;
  const status = m.status ? statusLine(m, actions) : null;
  return h('article', { class: classes, dataset: { id: m.id ?? '' }, 'aria-label': `${m.from} at ${timeOf(m.ms)}` },
    grouped ? null : h('div', { class: 'head' },
      h('span', { class: 'from' }, m.from),
      h('time', { class: 'time', datetime: new Date(m.ms).toISOString(), title: fullTime(m.ms) }, timeOf(m.ms))),
    remove,
    body,
    file?.caption ? h('div', { class: 'text' }, file.caption) : null,
    status);
}

const URL_LIKE = /\bhttps?:\/\/[^\s<>"]+/g;

/** The text as text nodes, with http(s) links as links (built as elements, never markup). */
function linked(text) {
  const parts = [];
  let at = 0;
  for (const match of text.matchAll(URL_LIKE)) {
    let url = match[0].replace(/[.,;:!?)\]]+$/, '');
    let href = null;
    try {
      const parsed = new URL(url);
      if (parsed.protocol === 'http:' || parsed.protocol === 'https:') href = parsed.href;
    } catch {
      href = null;
    }
    if (!href) continue;
    parts.push(text.slice(at, match.index));
    parts.push(h('a', { href, target: '_blank', rel: 'noopener noreferrer nofollow' }, url));
    at = match.index + url.length;
  }
  parts.push(text.slice(at));
  return parts;
}

function statusLine(m, actions) {
  switch (m.status) {
    case 'sending': return h('div', { class: 'status' }, 'sending…');
    case 'queued': return h('div', { class: 'status' }, 'waiting for the connection…');
    case 'failed':
      return h('div', { class: 'status', role: 'alert' }, `not sent: ${m.error}`,
        m.retry ? h('button', { type: 'button', onclick: () => actions.retry(m) }, 'Send again') : null);
    default: return null;
  }
}

function fileBox(file, actions) {
  const button = h('button', { type: 'button', onclick: () => actions.download(file, button) }, 'Download');
  const box = h('div', { class: 'file' },
    h('span', { class: 'file-name' }, icon('clip'), file.name),
    h('span', { class: 'file-size' }, `${bytes(file.size)} · ${file.type}`),
    button);
  if (isImage(file.type) && file.size <= 10 * 1024 * 1024) {
    const img = h('img', { alt: file.name, loading: 'lazy' });
    box.insertBefore(img, button);
    actions.fetchImage(file, img);
  }
  return box;
}

/**
 * The member list of a room: online first, with last seen and role; `menu(m)` gives the
 * [label, handler] actions of a member's menu (none: no menu).
 */
export function members(state, list, room, menu = () => []) {
  const info = state.rooms.get(room);
  const role = (name) => {
    if (info?.owner === name) return 'owner';
    if (info?.operators?.includes(name)) return 'operator';
    if (info?.muted?.includes(name)) return 'muted';
    return null;
  };
  const sorted = [...list].sort((a, b) => (b.online - a.online) || a.name.localeCompare(b.name));
  fill($('member-list'), sorted.map((m) => {
    const u = state.users.get(m.name);
    const online = u ? u.online : m.online;
    const seen = online ? 'online' : (u?.last_seen ? `seen ${ago(u.last_seen)}` : 'offline');
    const items = menu(m);
    return h('li', {},
      h('span', { class: `dot${online ? ' online' : ''}`, 'aria-hidden': 'true' }),
      h('span', {}, m.name === state.me ? `${m.name} (you)` : m.name),
      role(m.name) ? h('span', { class: 'role' }, role(m.name)) : null,
      h('span', { class: 'seen' }, seen),
      items.length ? h('details', {},
        h('summary', { 'aria-label': `Actions for ${m.name}`, role: 'button' }, '⋯'),
        h('div', { class: 'menu', role: 'menu' }, items.map(([label, handler]) => h('button', {
          type: 'button', role: 'menuitem', onclick: (e) => { e.target.closest('details').open = false; handler(); },
        }, label)))) : null);
  }));
}

/** A list of users with buttons: `buttons(user)` returns [label, handler] pairs. */
export function userList(el, users, buttons, empty) {
  if (!users.length) {
    fill(el, h('li', { class: 'none' }, empty));
    return;
  }
  fill(el, users.map((u) => h('li', {},
    h('span', { class: `dot${u.online ? ' online' : ''}`, 'aria-hidden': 'true' }),
    h('span', { class: 'grow' }, u.label ?? u.name),
    buttons(u).map(([label, handler, aria]) => h('button', { type: 'button', onclick: handler, 'aria-label': aria ?? `${label} ${u.name}` }, label)))));
}

/** An upload's row, with its progress bar. */
export function uploadRow(name) {
  const bar = h('progress', { max: 1, value: 0, 'aria-label': `Uploading ${name}` });
  const state = h('span', {}, 'hashing…');
  const row = h('div', { class: 'upload' }, h('span', {}, name), state, bar);
  $('uploads').append(row);
  return {
    progress(phase, done, total) {
      bar.max = total || 1;
      bar.value = done;
      state.textContent = phase === 'hashing' ? 'checking…' : `${Math.floor((100 * done) / (total || 1))} %`;
    },
    done() { row.remove(); },
    failed(why) {
      state.textContent = `failed: ${why}`;
      row.classList.add('failed');
      setTimeout(() => row.remove(), 8000);
    },
  };
}
