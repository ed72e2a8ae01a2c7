// parley's web app in Debian's Chromium, against a real server, beside text and binary
// users over real sockets. Screenshots of the main views go to target/web-artifacts/.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Server, browser, page, tab, register, TextUser, BinaryUser, shot, artifacts } from './harness.mjs';

let server;
let chrome;

before(async () => {
  server = await new Server().start();
  chrome = await browser();
});

after(async () => {
  await chrome?.close();
  await server?.dispose();
});

/** The texts of the open conversation's messages, in order. */
const texts = (p) => p.$$eval('#messages article .text', (els) => els.map((e) => e.textContent));

/** Opens the sidebar entry named `name`. */
async function openConversation(p, name) {
  await p.click(`.convs button[aria-label^="${name}"]`);
  await p.waitForFunction((n) => document.querySelector('#conv-name')?.textContent === n, name);
}

async function joinRoom(p, room) {
  await p.click('#open-join');
  await p.fill('#join-name', room);
  await p.click('#join-submit');
  await p.waitForFunction((n) => document.querySelector('#conv-name')?.textContent === n, room);
}

async function send(p, text) {
  await p.fill('#input', text);
  await p.press('#input', 'Enter');
}

/** Waits until the open conversation shows `text`. */
const shows = (p, text) => p.waitForFunction(
  (t) => [...document.querySelectorAll('#messages article .text')].some((e) => e.textContent === t), text);

/** Waits until the open conversation shows exactly `list` (a live message may come before
 * the history page loading beside it), then checks it: a duplicate or a gap never settles. */
async function showsExactly(p, list) {
  const want = JSON.stringify(list);
  await p.waitForFunction(
    (w) => JSON.stringify([...document.querySelectorAll('#messages article .text')].map((e) => e.textContent)) === w,
    want, { timeout: 10000 }).catch(() => {});
  assert.deepEqual(await texts(p), list);
}

test('two browsers register and chat in a room, live', async () => {
  const ann = await page(chrome);
  const ben = await page(chrome);
  await register(ann, server, 'ann');
  await register(ben, server, 'ben');
  await joinRoom(ann, '#general');
  await joinRoom(ben, '#general');
  await send(ann, 'hello from ann');
  await shows(ben, 'hello from ann');
  // Sent, then stored: the "sending…" mark goes once the server has it.
  await ann.waitForFunction(() => !document.querySelector('#messages .msg.pending'));
  // Shift+Enter starts a new line, Enter sends.
  await ben.fill('#input', 'hi ann, ben here');
  await ben.press('#input', 'Shift+Enter');
  await ben.type('#input', 'on two lines');
  await ben.press('#input', 'Enter');
  await shows(ann, 'hi ann, ben here\non two lines');
  assert.deepEqual(await texts(ann), ['hello from ann', 'hi ann, ben here\non two lines']);
  // Members, with presence.
  await ann.click('#toggle-members');
  await ann.waitForFunction(() => document.querySelectorAll('#member-list li').length === 2);
  await shot(ann, 'desktop-room');
  await ann.click('#toggle-members');
  // Contacts: ann asks, ben accepts, live.
  await ann.click('#open-contacts');
  await ann.fill('#contact-search', 'be');
  await ann.click('#contact-results button[aria-label="Add ben"]');
  await ben.waitForSelector('#contacts-badge:not([hidden])');
  await ben.click('#open-contacts');
  await ben.click('#contact-requests button[aria-label="Accept ann"]');
  await ann.waitForFunction(() => [...document.querySelectorAll('#contact-list li')].some((li) => li.textContent.includes('ben')));
  await shot(ann, 'desktop-contacts');
  await ann.keyboard.press('Escape');
  await ben.keyboard.press('Escape');
  assert.deepEqual([...ann.errors, ...ben.errors], []);
  await ann.context().close();
  await ben.context().close();
});

test('a DM reaches a text user and a binary user, and their replies appear', async () => {
  const nick = await TextUser.connect(server.port, 'nick');
  const bin = await BinaryUser.connect(server.port, 'bin');
  const cat = await page(chrome);
  await register(cat, server, 'cat');
  for (const [name, reply] of [['nick', null], ['bin', null]]) {
    await cat.click('#open-dm');
    await cat.fill('#dm-search', name);
    await cat.click(`#dm-results button[aria-label="Message ${name}"]`);
    await cat.waitForFunction((n) => document.querySelector('#conv-name')?.textContent === n, name);
    await send(cat, `hello ${name}`);
    void reply;
  }
  assert.equal(await nick.lineMatching(/^DM /), 'DM cat hello nick');
  const pushed = await bin.push();
  assert.deepEqual(pushed, { text: 'hello bin', from: 'cat', to: 'bin' });
  nick.send('DM cat hi cat, from a terminal');
  // Another conversation's message counts as unread in the sidebar.
  await cat.waitForSelector('.convs button[aria-label="nick, 1 unread"]');
  assert.equal(await cat.title(), '(1) parley');
  assert.equal(await bin.message('cat', 'hi cat, from a binary client'), 1);
  await shows(cat, 'hi cat, from a binary client');
  await openConversation(cat, 'nick');
  await cat.waitForSelector('.convs button[aria-label="nick"]');
  await shows(cat, 'hi cat, from a terminal');
  assert.deepEqual(await texts(cat), ['hello nick', 'hi cat, from a terminal']);
  nick.close();
  bin.close();
  await cat.context().close();
});

test('a reload keeps the session and the history; older pages load on scroll', async () => {
  const dee = await page(chrome);
  await register(dee, server, 'dee');
  const feeder = await TextUser.connect(server.port, 'feeder');
  for (let i = 1; i <= 120; i++) feeder.send(`DM dee message ${String(i).padStart(3, '0')}`);
  feeder.send('PING');
  await feeder.lineMatching(/^PONG$/);
  await dee.waitForSelector('.convs button[aria-label^="feeder"]');
  await dee.reload();
  await dee.waitForFunction(() => document.querySelector('#me-status')?.classList.contains('online'));
  await openConversation(dee, 'feeder');
  await shows(dee, 'message 120');
  const first = await texts(dee);
  assert.equal(first.length, 50, 'the latest page');
  assert.equal(first[0], 'message 071');
  // Scrolling up brings the older pages, in order, until the beginning.
  for (let i = 0; i < 10 && (await texts(dee)).length < 120; i++) {
    await dee.$eval('#messages', (el) => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); });
    await dee.waitForTimeout(300);
  }
  const all = await texts(dee);
  assert.equal(all.length, 120);
  assert.deepEqual(all, Array.from({ length: 120 }, (_, i) => `message ${String(i + 1).padStart(3, '0')}`));
  await dee.waitForSelector('text=This is the beginning of the conversation.');
  await dee.$eval('#messages', (el) => { el.scrollTop = el.scrollHeight; });
  await shot(dee, 'desktop-history');
  feeder.close();
  await dee.context().close();
});

test('after a server restart, what was sent meanwhile appears once each, in order', async () => {
  const eve = await page(chrome);
  await register(eve, server, 'eve');
  const fred = await TextUser.connect(server.port, 'fred');
  fred.send('DM eve before the restart');
  await eve.waitForSelector('.convs button[aria-label^="fred"]');
  await openConversation(eve, 'fred');
  await shows(eve, 'before the restart');
  fred.close();
  await server.stop();
  await eve.waitForSelector('#banner:not([hidden])');
  assert.match(await eve.textContent('#banner'), /offline/i);
  await shot(eve, 'desktop-offline');
  await server.start();
  const fred2 = await TextUser.connect(server.port, 'fred');
  for (let i = 1; i <= 5; i++) fred2.send(`DM eve while away ${i}`);
  fred2.send('PING');
  await fred2.lineMatching(/^PONG$/);
  await eve.click('#banner button');
  await eve.waitForSelector('#banner', { state: 'hidden' });
  await shows(eve, 'while away 5');
  await eve.waitForTimeout(500);
  assert.deepEqual(await texts(eve), ['before the restart', ...[1, 2, 3, 4, 5].map((i) => `while away ${i}`)]);
  // And a reload shows them once each too.
  await eve.reload();
  await openConversation(eve, 'fred');
  await shows(eve, 'while away 5');
  assert.deepEqual(await texts(eve), ['before the restart', ...[1, 2, 3, 4, 5].map((i) => `while away ${i}`)]);
  fred2.close();
  await eve.context().close();
});

test('a file is uploaded and downloaded byte-identical, an image shows inline', async () => {
  const gus = await page(chrome);
  const hal = await page(chrome);
  await register(gus, server, 'gus');
  await register(hal, server, 'hal');
  await joinRoom(gus, '#files');
  await joinRoom(hal, '#files');
  const data = randomBytes(3 * 1024 * 1024 + 123);
  const file = path.join(artifacts, 'upload.bin');
  writeFileSync(file, data);
  // A 1×1 PNG.
  const png = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==', 'base64');
  const image = path.join(artifacts, 'pixel.png');
  writeFileSync(image, png);
  await gus.setInputFiles('#file-input', [file, image]);
  await hal.waitForSelector('.file img[alt="pixel.png"]');
  await hal.waitForFunction(() => document.querySelector('.file img[alt="pixel.png"]')?.naturalWidth === 1);
  const [download] = await Promise.all([
    hal.waitForEvent('download'),
    hal.click('.file:has-text("upload.bin") button'),
  ]);
  const saved = path.join(artifacts, 'downloaded.bin');
  await download.saveAs(saved);
  const sha = (b) => createHash('sha256').update(b).digest('hex');
  assert.equal(sha(readFileSync(saved)), sha(data));
  assert.equal(download.suggestedFilename(), 'upload.bin');
  await shot(hal, 'desktop-files');
  assert.deepEqual([...gus.errors, ...hal.errors], []);
  await gus.context().close();
  await hal.context().close();
});

test('a hostile message renders as text, never as HTML', async () => {
  const ivy = await page(chrome);
  await register(ivy, server, 'ivy');
  const mal = await TextUser.connect(server.port, 'mal');
  const hostile = '<img src=x onerror=alert(1)>';
  mal.send(`DM ivy ${hostile}`);
  await ivy.waitForSelector('.convs button[aria-label^="mal"]');
  await openConversation(ivy, 'mal');
  await shows(ivy, hostile);
  assert.equal(await ivy.$$eval('#messages img', (imgs) => imgs.length), 0);
  // Web addresses become links (built as elements); other schemes stay text.
  mal.send('DM ivy see https://example.org/page?a=1. or javascript:alert(2)');
  await shows(ivy, 'see https://example.org/page?a=1. or javascript:alert(2)');
  const links = await ivy.$$eval('#messages a', (as) => as.map((a) => [a.getAttribute('href'), a.rel]));
  assert.deepEqual(links, [['https://example.org/page?a=1', 'noopener noreferrer nofollow']]);
  assert.deepEqual(ivy.errors, [], 'no dialog, no script error');
  mal.close();
  await ivy.context().close();
});

/** How many `type` listeners `target` (an expression: `window`) has, as DevTools sees them. */
async function listeners(p, target, type) {
  const cdp = await p.context().newCDPSession(p);
  const { result } = await cdp.send('Runtime.evaluate', { expression: target });
  const { listeners: all } = await cdp.send('DOMDebugger.getEventListeners', { objectId: result.objectId });
  await cdp.detach();
  return all.filter((l) => l.type === type).length;
}

test('the app works at 360 px', async () => {
  const jo = await page(chrome, { width: 360, height: 740 });
  await register(jo, server, 'jo');
  // One set of reconnect listeners while logged in (registering opened other sockets,
  // which keep none).
  assert.equal(await listeners(jo, 'window', 'online'), 1);
  await shot(jo, 'mobile-list');
  await joinRoom(jo, '#general');
  assert.equal(await jo.isVisible('#sidebar'), false, 'one pane at a time');
  await send(jo, 'hello from a phone');
  await shows(jo, 'hello from a phone');
  const overflow = await jo.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  assert.equal(overflow, false, 'nothing wider than the screen');
  await shot(jo, 'mobile-room');
  await jo.click('#back');
  assert.equal(await jo.isVisible('#sidebar'), true);
  // Log out revokes this browser's token: the login form comes back.
  await jo.click('#open-menu');
  await jo.click('#logout');
  await jo.waitForSelector('#login:not([hidden])');
  assert.equal(await listeners(jo, 'window', 'online'), 0, 'a stopped connection keeps none');
  await jo.reload();
  await jo.waitForSelector('#login:not([hidden])');
  await jo.context().close();
});

test('a room owner moderates from the web app; deletions and presence arrive live', async () => {
  const kim = await page(chrome);
  const lee = await page(chrome);
  await register(kim, server, 'kim');
  await register(lee, server, 'lee');
  await joinRoom(kim, '#mod');
  await joinRoom(lee, '#mod');
  // The owner sets the topic; the other member sees it, and may not edit it.
  await kim.click('#edit-topic');
  await kim.fill('#topic-input', 'be kind');
  await kim.click('#topic-submit');
  await kim.waitForFunction(() => document.querySelector('#conv-detail')?.textContent === 'be kind');
  await lee.waitForFunction(() => document.querySelector('#conv-detail')?.textContent === 'be kind');
  assert.equal(await lee.isVisible('#edit-topic'), false, 'members do not edit the topic');

  // lee's message, deleted by the owner: both show it deleted, live, without its words.
  await send(lee, 'something regrettable');
  await shows(kim, 'something regrettable');
  const regrettable = '#messages article:has-text("something regrettable")';
  await kim.hover(regrettable);
  await kim.click(`${regrettable} button.delete`);
  await kim.waitForSelector('#messages .text.deleted');
  await lee.waitForSelector('#messages .text.deleted');
  assert.equal(await lee.textContent('#messages .text.deleted'), 'message deleted');
  assert.equal(await lee.$$eval('#messages .text', (els) => els.some((e) => e.textContent.includes('regrettable'))), false);
  // A member deletes their own messages only: no button on the owner's.
  await send(kim, 'owner speaking');
  await shows(lee, 'owner speaking');
  assert.equal(await lee.$$eval('#messages article:has-text("owner speaking") button.delete', (b) => b.length), 0);

  // The member menu: a muted member's message is refused, and says why.
  await kim.click('#toggle-members');
  await kim.waitForFunction(() => document.querySelectorAll('#member-list li').length === 2);
  await kim.click('#member-list summary[aria-label="Actions for lee"]');
  await kim.click('#member-list .menu button:has-text("Mute")');
  await kim.waitForSelector('#member-list li:has-text("lee") .role:has-text("muted")');
  await shot(kim, 'desktop-moderation');
  await send(lee, 'can I still talk?');
  await lee.waitForSelector('#messages .msg.failed');
  assert.match(await lee.textContent('#messages .msg.failed .status'), /muted/i);

  // Presence without polling: kim's direct conversation with lee shows lee online, then
  // gone as soon as lee's browser is.
  await kim.click('#open-dm');
  await kim.fill('#dm-search', 'lee');
  await kim.click('#dm-results button[aria-label="Message lee"]');
  await kim.waitForFunction(() => document.querySelector('#conv-detail')?.textContent === 'online');
  await send(kim, 'hello lee');
  await lee.waitForSelector('.convs button[aria-label^="kim"]');

  // A block: lee blocks kim from their direct conversation; kim's next DM is refused.
  await openConversation(lee, 'kim');
  await lee.click('#block');
  await lee.waitForFunction(() => document.querySelector('#block')?.textContent === 'Unblock');
  await send(kim, 'are you there?');
  await kim.waitForSelector('#messages .msg.failed');
  assert.match(await kim.textContent('#messages .msg.failed .status'), /blocked/i);

  // The owner kicks lee: the room leaves lee's sidebar.
  await openConversation(kim, '#mod');
  await kim.click('#toggle-members');
  await kim.click('#member-list summary[aria-label="Actions for lee"]');
  await kim.click('#member-list .menu button:has-text("Kick")');
  await lee.waitForFunction(() => !document.querySelector('.convs button[aria-label^="#mod"]'));

  await openConversation(kim, 'lee');
  assert.deepEqual([...kim.errors, ...lee.errors], []);
  await lee.context().close();
  await kim.waitForFunction(() => /^last seen/.test(document.querySelector('#conv-detail')?.textContent ?? ''));
  await kim.context().close();
});

/** Whether the app is connected and subscribed. */
const online = (p) => p.waitForFunction(() => document.querySelector('#me-status')?.classList.contains('online'));

/** The WebSockets `p` opens from now on, to check which are still open. */
function sockets(p) {
  const list = [];
  p.on('websocket', (ws) => list.push(ws));
  return list;
}

/** Waits until every socket of `list` is closed. */
const allClosed = (list) => Promise.all(list.filter((ws) => !ws.isClosed()).map((ws) => ws.waitForEvent('close', { timeout: 10000 })));

/** Two tabs of one browser: the second says the session is open in the first, "Use here"
 * moves it there (a message then reaches only the second), and back. */
async function handOver(name, init) {
  const one = await page(chrome, undefined, init);
  const oneSockets = sockets(one);
  await register(one, server, name);
  const sam = await TextUser.connect(server.port, `${name}-friend`);
  sam.send(`DM ${name} for the first tab`);
  await openConversation(one, `${name}-friend`);
  await shows(one, 'for the first tab');

  // The same browser's second tab: no second session, a banner and a button instead.
  const two = await tab(one.context());
  const twoSockets = sockets(two);
  await two.goto(server.url);
  await two.waitForSelector('#elsewhere:not([hidden])');
  assert.match(await two.textContent('#elsewhere'), /open in another tab/);
  assert.equal(await two.isVisible('#app'), false);
  await allClosed(twoSockets);
  const waited = twoSockets.length;

  // "Use here": the first tab closes its socket and shows the banner; the second connects.
  await two.click('#use-here');
  await online(two);
  await one.waitForSelector('#elsewhere:not([hidden])');
  await allClosed(oneSockets);
  sam.send(`DM ${name} for the second tab`);
  await openConversation(two, `${name}-friend`);
  await shows(two, 'for the second tab');
  await showsExactly(two, ['for the first tab', 'for the second tab']);
  assert.ok(oneSockets.every((ws) => ws.isClosed()), 'nothing reached the first tab');

  // And back: the first tab takes over again and shows what it missed, once each.
  await one.click('#use-here');
  await online(one);
  await two.waitForSelector('#elsewhere:not([hidden])');
  await allClosed(twoSockets);
  sam.send(`DM ${name} back in the first tab`);
  await shows(one, 'back in the first tab');
  await showsExactly(one, ['for the first tab', 'for the second tab', 'back in the first tab']);
  assert.deepEqual([...one.errors, ...two.errors], []);
  sam.close();
  return { one, two, waited };
}

test('a second tab says the session is open elsewhere; "Use here" moves it, and back', async () => {
  const { one, two, waited } = await handOver('pat');
  // With Web Locks the tab that waits opens no socket of its own.
  assert.equal(waited, 0, 'the second tab did not connect before "Use here"');
  await shot(two, 'desktop-other-tab');
  await one.context().close();
});

test('without Web Locks (plain http from another host), the server decides which tab holds it', async () => {
  const noLocks = () => Object.defineProperty(Navigator.prototype, 'locks', { configurable: true, get: () => undefined });
  const { one } = await handOver('quin', noLocks);
  assert.equal(await one.evaluate(() => navigator.locks), undefined);
  await one.context().close();
});

test('a tab that does not let go loses the session after a few seconds', async () => {
  const rae = await page(chrome);
  await register(rae, server, 'rae');
  // Another page of this origin takes the lock and never answers (as a frozen tab would).
  const stuck = await tab(rae.context());
  await stuck.goto(`${server.url}manifest.json`);
  const held = stuck.evaluate(() => new Promise((resolve) => {
    const name = `parley.session.${localStorage.getItem('parley.device')}`;
    navigator.locks.request(name, { steal: true }, () => {
      resolve('held');
      return new Promise(() => {});
    }).catch((e) => { window.lost = e.name; });
  }));
  assert.equal(await held, 'held');
  // Its lock taken, the app lets go at once.
  await rae.waitForSelector('#elsewhere:not([hidden])');
  // "Use here" asks; nobody answers; after a few seconds the lock is taken back.
  await rae.click('#use-here');
  await online(rae);
  await stuck.waitForFunction(() => window.lost === 'AbortError');
  assert.deepEqual(rae.errors, []);
  await rae.context().close();
});

/** A page whose notifications are recorded (`window.raised`) and whose visibility the test
 * sets (`window.setHidden`), as a tab in the background would be. */
function notificationStub() {
  window.raised = [];
  window.Notification = class {
    static permission = 'granted';

    static requestPermission() {
      return Promise.resolve('granted');
    }

    constructor(title, options = {}) {
      window.raised.push({ title, body: options.body });
    }

    close() {}
  };
  let hidden = false;
  Object.defineProperty(document, 'hidden', { configurable: true, get: () => hidden });
  Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (hidden ? 'hidden' : 'visible') });
  window.setHidden = (h) => {
    hidden = h;
    document.dispatchEvent(new Event('visibilitychange'));
  };
}

test('a DM or a mention raises a notification while the tab is hidden, none while shown', async () => {
  const nia = await page(chrome, undefined, notificationStub);
  await register(nia, server, 'nia');
  await joinRoom(nia, '#notes');
  const ola = await TextUser.connect(server.port, 'ola');
  ola.send('JOIN #notes');
  assert.equal(await ola.line(), 'OK');
  // Shown: nothing is raised, whatever arrives.
  ola.send('DM nia seen while shown');
  ola.send('SAY #notes @nia seen while shown too');
  await nia.waitForSelector('.convs button[aria-label^="ola"]');
  await shows(nia, '@nia seen while shown too');
  // Hidden: a DM and a mention are raised; a room message without a mention is not.
  await nia.evaluate(() => window.setHidden(true));
  ola.send('DM nia are you there?');
  ola.send('SAY #notes just chatting');
  ola.send('SAY #notes @nia have a look');
  ola.send('DM nia last one');
  await nia.waitForFunction(() => window.raised.length >= 3);
  assert.deepEqual(await nia.evaluate(() => window.raised), [
    { title: 'ola', body: 'are you there?' },
    { title: 'ola in #notes', body: '@nia have a look' },
    { title: 'ola', body: 'last one' },
  ]);
  assert.deepEqual(nia.errors, []);
  ola.close();
  await nia.context().close();
});
