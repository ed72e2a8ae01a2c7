// Times, sizes and the text form of file messages.

/** A message's `time` in ms since 1970: senders put seconds, ms, µs or ns there. */
export function toMs(time, fallback = Date.now()) {
  const t = Number(time);
  if (!Number.isFinite(t) || t <= 0) return fallback;
  if (t > 1e17) return t / 1e6;
  if (t > 1e14) return t / 1e3;
  if (t > 1e11) return t;
  return t * 1e3;
}

const clock = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const full = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });
const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'long', day: 'numeric', month: 'long', year: 'numeric' });

/** 14:05, in the viewer's time zone. */
export const timeOf = (ms) => clock.format(new Date(ms));
/** The full date and time, for a tooltip. */
export const fullTime = (ms) => full.format(new Date(ms));

/** A local calendar day, as a key. */
export function dayKey(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

/** "Today", "Yesterday" or the date. */
export function dayLabel(ms) {
  const today = dayKey(Date.now());
  const yesterday = dayKey(Date.now() - 86400000);
  const key = dayKey(ms);
  if (key === today) return 'Today';
  if (key === yesterday) return 'Yesterday';
  return dayFormat.format(new Date(ms));
}

/** "3 min ago", for last seen. */
export function ago(ms) {
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return 'just now';
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(ms).toLocaleDateString();
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

const FILE = /^\[file name="([^"]*)" size=(\d+) type=(\S+) sha256=([0-9a-f]{64})\](?: (.*))?$/s;

/** The file a message carries (`[file name="…" size=N type=… sha256=…] caption`), or null. */
export function parseFile(text) {
  const m = FILE.exec(text);
  if (!m) return null;
  return { name: m[1], size: Number(m[2]), type: m[3], sha256: m[4], caption: m[5] || '' };
}

/** Whether a file of this type is shown inline. */
export const isImage = (type) => /^image\/(png|jpeg|gif|webp|avif)$/i.test(type);
