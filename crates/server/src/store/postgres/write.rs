//! One group commit as one PostgreSQL transaction, in two round trips.
//!
//! 1. `BEGIN`; lock the rows of the conversations the batch writes to, in id order (two
//!    nodes locking the same rows in different orders would deadlock), reading their
//!    `last_seq`; take the batch's ids from `message_ids`, a value per block of
//!    [`ID_BLOCK`] messages (schema.rs, version 5). The locks order the nodes
//!    writing one conversation: a node holds them until it commits, so the next node's
//!    sequences and ids follow its own, and when sequence `s` is committed every sequence
//!    before it is too (a gap in what NATS brings can always be read back).
//! 2. The conversations' new `last_seq`, the messages (a pack per conversation, pack.rs:
//!    one multi-row insert from arrays), every other row of the batch, `COMMIT`: sent
//!    together, each answer checked (after a failed statement PostgreSQL answers `COMMIT`
//!    with a rollback, not an error).
//!
//! Users, devices and conversations are not created here: a cluster creates them at once,
//! on their own (cluster.rs), so that a name taken on two nodes at once cannot fail a batch
//! of messages.

/// The batch's maps, by conversation: looked up a few times per message, so hashed by
/// ahash rather than SipHash.
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

use anyhow::Context;
use futures_util::future::join_all;
use tokio_postgres::types::ToSql;

use super::pack::Builder;
use super::schema::ID_BLOCK;
use super::{Conn, Counters};
use crate::store::{Batch, ConvId, Revoke, Seq, Tombstone};

/// Writes `batch`; returns each message's (id, sequence), in the batch's order
/// ([`NOT_STORED`](crate::store::NOT_STORED) for a tombstone of a message another node
/// deleted first: the deletion is that node's, and this one a no-op).
pub(super) async fn batch(
    conn: &mut Conn,
    counters: &mut Counters,
    batch: &Batch,
) -> anyhow::Result<Vec<(i64, Seq)>> {
    anyhow::ensure!(
        batch.users.is_empty()
            && batch.devices.is_empty()
            && batch.directs.is_empty()
            && batch.rooms.is_empty(),
        "the PostgreSQL store creates users, devices and conversations on their own"
    );
    // The conversations written to, in id order, and how many messages each gets.
    let mut counts: HashMap<ConvId, i64> = HashMap::default();
    for m in &batch.messages {
        *counts.entry(m.conv).or_default() += 1;
    }
    let mut convs: Vec<ConvId> = counts.keys().copied().collect();
    convs.sort_unstable();
    let n = batch.messages.len() as i64;
    let blocks = (n + ID_BLOCK - 1) / ID_BLOCK;

    let begin = conn.prepare("BEGIN").await?;
    let lock = conn
        .prepare("SELECT id, last_seq FROM conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .await?;
    let ids = conn
        .prepare("SELECT nextval('message_ids') FROM generate_series(1, $1::bigint)")
        .await?;
    // Messages this batch deletes that are deleted already: read after the locks (a
    // tombstone is in its deleted message's conversation), so a deletion another node
    // committed before them is seen, and this batch's tombstone for it is not stored.
    let deleted = conn
        .prepare("SELECT message_id FROM deletions WHERE message_id = ANY($1)")
        .await?;
    let doomed: Vec<i64> = batch.deletions.iter().map(|d| d.message).collect();
    let client = &conn.client;
    let (began, locked, numbered, gone) = tokio::join!(
        client.execute(&begin, &[]),
        async {
            if convs.is_empty() {
                return Ok(Vec::new());
            }
            client.query(&lock, &[&convs]).await
        },
        async {
            if n == 0 {
                return Ok(Vec::new());
            }
            client.query(&ids, &[&blocks]).await
        },
        async {
            if doomed.is_empty() {
                return Ok(Vec::new());
            }
            client.query(&deleted, &[&doomed]).await
        },
    );
    let first_trip = began
        .context("BEGIN")
        .and(locked.context("locking the conversations"))
        .and_then(|locked| Ok((locked, numbered.context("taking message ids")?)))
        .and_then(|(l, n)| Ok((l, n, gone.context("reading deletions")?)));
    let (locked, numbered, gone) = match first_trip {
        Ok(rows) => rows,
        Err(e) => {
            rollback(conn).await;
            return Err(e);
        }
    };
    counters.statements += 3 + u64::from(!doomed.is_empty());
    // Their tombstones (by the hub's ids): neither stored nor given a sequence.
    let gone: Vec<i64> = gone.iter().map(|r| r.get(0)).collect();
    let refused: Vec<i64> = batch
        .deletions
        .iter()
        .filter(|d| gone.contains(&d.message))
        .map(|d| d.tombstone)
        .collect();
    let mut last: HashMap<ConvId, Seq> = locked.iter().map(|r| (r.get(0), r.get(1))).collect();
    if last.len() != convs.len() {
        rollback(conn).await;
        anyhow::bail!("a batch names a conversation that is not stored");
    }
    let mut starts: Vec<i64> = numbered.iter().map(|r| r.get(0)).collect();
    // One session's nextval calls ascend; sorted all the same, as nothing else orders them.
    starts.sort_unstable();
    let ids = ids_of(&starts, batch.messages.len());
    if ids.len() != batch.messages.len() {
        rollback(conn).await;
        anyhow::bail!("{} message ids taken for {n} messages", ids.len());
    }

    // Each message's sequence, following its conversation's last one; its pack.
    let mut assigned = Vec::with_capacity(batch.messages.len());
    let mut packs: HashMap<ConvId, Vec<Builder>> = HashMap::default();
    for (m, &id) in batch.messages.iter().zip(&ids) {
        if refused.contains(&m.id) {
            assigned.push(crate::store::NOT_STORED);
            continue;
        }
        let seq = last.get_mut(&m.conv).expect("locked above");
        *seq += 1;
        assigned.push((id, *seq));
        let open = packs.entry(m.conv).or_default();
        if !open.last().is_some_and(|p| p.fits(m)) {
            open.push(Builder::new(*seq));
        }
        // A tombstone says what it deletes (pack.rs): nodes deliver it without asking.
        let tombstone = match batch.deletions.iter().find(|d| d.tombstone == m.id) {
            Some(d) => Tombstone::Of(d.message, d.seq),
            None => Tombstone::No,
        };
        open.last_mut()
            .expect("pushed above")
            .push(id, m, tombstone);
    }
    let new_last: Vec<Seq> = convs.iter().map(|c| last[c]).collect();
    let mut columns = Packs::default();
    for conv in &convs {
        for pack in packs.remove(conv).unwrap_or_default() {
            columns.push(*conv, pack);
        }
    }

    let result = second_trip(conn, counters, batch, &ids, &convs, &new_last, &columns).await;
    if let Err(e) = result {
        rollback(conn).await;
        return Err(e);
    }
    counters.batches += 1;
    counters.messages += batch.messages.len() as u64;
    counters.message_bytes += batch
        .messages
        .iter()
        .map(|m| m.body.len() as u64)
        .sum::<u64>();
    Ok(assigned)
}

/// The first `n` ids of the blocks beginning at `starts` (ascending): each value of
/// `message_ids` is the first of [`ID_BLOCK`] ids no other value's block holds.
fn ids_of(starts: &[i64], n: usize) -> Vec<i64> {
    starts
        .iter()
        .flat_map(|&start| start..start + ID_BLOCK)
        .take(n)
        .collect()
}

/// The packs of a batch as the insert's arrays.
#[derive(Default)]
struct Packs {
    conv: Vec<i64>,
    last_seq: Vec<i64>,
    first_seq: Vec<i64>,
    last_id: Vec<i64>,
    data: Vec<Vec<u8>>,
}

impl Packs {
    fn push(&mut self, conv: ConvId, pack: Builder) {
        self.conv.push(conv);
        self.last_seq.push(pack.last_seq);
        self.first_seq.push(pack.first_seq);
        self.last_id.push(pack.last_id);
        self.data.push(pack.data);
    }
}

async fn second_trip(
    conn: &mut Conn,
    counters: &mut Counters,
    batch: &Batch,
    ids: &[i64],
    convs: &[ConvId],
    new_last: &[Seq],
    packs: &Packs,
) -> anyhow::Result<()> {
    let now = crate::store::now_ms();
    // Every statement prepared first: the pipeline below only binds and executes.
    let s = Statements::prepare(conn).await?;
    // Moderation's rows (moderation.rs): most batches have none.
    let moderation = super::moderation::Rows::of(batch, ids)?;
    type Params<'p> = Vec<&'p (dyn ToSql + Sync)>;
    let mut steps: Vec<(&'static str, tokio_postgres::Statement, Params<'_>)> = Vec::new();
    macro_rules! step {
        ($what:expr, exec($statement:expr, $params:expr $(,)?) $(,)?) => {
            steps.push(($what, ($statement).clone(), $params))
        };
    }
    if !convs.is_empty() {
        step!("sequences", exec(&s.last_seq, vec![&convs, &new_last]));
        step!(
            "messages",
            exec(
                &s.messages,
                vec![
                    &packs.conv,
                    &packs.last_seq,
                    &packs.first_seq,
                    &packs.last_id,
                    &packs.data,
                ],
            ),
        );
    }
    // Leaves and joins: `Batch::join` and `Batch::leave` keep one change per (user, room).
    for (user, conv) in &batch.leaves {
        step!("leave", exec(&s.leave, vec![user, conv]));
    }
    for (user, conv, seq) in &batch.joins {
        step!("join", exec(&s.join, vec![user, conv, seq]));
    }
    // Cursors in key order: two nodes writing the same rows lock them in the same order.
    let mut cursors: Vec<(&(i64, i64), &Seq)> = batch.cursors.iter().collect();
    cursors.sort_unstable();
    let cursor_devices: Vec<i64> = cursors.iter().map(|((d, _), _)| *d).collect();
    let cursor_convs: Vec<i64> = cursors.iter().map(|((_, c), _)| *c).collect();
    let cursor_seqs: Vec<i64> = cursors.iter().map(|(_, s)| **s).collect();
    if !cursors.is_empty() {
        step!(
            "cursors",
            exec(
                &s.cursors,
                vec![&cursor_devices, &cursor_convs, &cursor_seqs]
            ),
        );
    }
    for (user, device, at) in &batch.seen {
        step!("user seen", exec(&s.user_seen, vec![user, at]));
        step!("device seen", exec(&s.device_seen, vec![device, at]));
    }
    for (user, hash) in &batch.passwords {
        step!("password", exec(&s.password, vec![user, hash]));
    }
    for t in &batch.tokens {
        step!(
            "token",
            exec(
                &s.token,
                vec![&t.hash, &t.user, &t.device, &now, &t.expires_at],
            ),
        );
    }
    for r in &batch.revocations {
        match r {
            Revoke::Device(user, device) => {
                step!("revoke", exec(&s.revoke_device, vec![user, device, &now]))
            }
            Revoke::AllBut(user, device) => {
                step!("revoke", exec(&s.revoke_others, vec![user, device, &now]))
            }
        }
    }
    for p in &batch.profiles {
        step!(
            "profile",
            exec(&s.profile, vec![&p.user, &p.display_name, &p.avatar]),
        );
    }
    let states: Vec<Option<i16>> = batch
        .contacts
        .iter()
        .map(|(_, _, state)| state.map(|s| s as i16))
        .collect();
    for ((user, other, _), state) in batch.contacts.iter().zip(&states) {
        match state {
            Some(_) => step!(
                "contact",
                exec(&s.set_contact, vec![user, other, state, &now]),
            ),
            None => step!("contact", exec(&s.drop_contact, vec![user, other])),
        }
    }
    let sizes: Vec<i64> = batch.files.iter().map(|(_, size)| *size as i64).collect();
    for ((hash, _), size) in batch.files.iter().zip(&sizes) {
        step!("file", exec(&s.file, vec![hash, size, &now]));
    }
    for (hash, conv) in &batch.attachments {
        step!("attachment", exec(&s.attach, vec![hash, conv]));
    }
    steps.extend(moderation.steps(conn).await?);
    step!("COMMIT", exec(&s.commit, vec![]));
    counters.statements += steps.len() as u64;
    let client = &conn.client;
    let futures = steps
        .iter()
        .map(|(_, statement, params)| client.execute(statement, params));
    for ((what, ..), result) in steps.iter().zip(join_all(futures).await) {
        result.with_context(|| format!("writing a batch: {what}"))?;
    }
    Ok(())
}

/// Ends a failed transaction (if the connection still stands).
async fn rollback(conn: &mut Conn) {
    if let Err(e) = conn.client.batch_execute("ROLLBACK").await {
        tracing::debug!(error = %e, "rolling back a failed batch");
    }
}

/// The second round trip's statements.
struct Statements {
    last_seq: tokio_postgres::Statement,
    messages: tokio_postgres::Statement,
    leave: tokio_postgres::Statement,
    join: tokio_postgres::Statement,
    cursors: tokio_postgres::Statement,
    user_seen: tokio_postgres::Statement,
    device_seen: tokio_postgres::Statement,
    password: tokio_postgres::Statement,
    token: tokio_postgres::Statement,
    revoke_device: tokio_postgres::Statement,
    revoke_others: tokio_postgres::Statement,
    profile: tokio_postgres::Statement,
    set_contact: tokio_postgres::Statement,
    drop_contact: tokio_postgres::Statement,
    file: tokio_postgres::Statement,
    attach: tokio_postgres::Statement,
    commit: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(conn: &mut Conn) -> anyhow::Result<Statements> {
        Ok(Statements {
            last_seq: conn
                .prepare(
                    "UPDATE conversations c SET last_seq = v.last
                     FROM unnest($1::int8[], $2::int8[]) AS v(id, last) WHERE c.id = v.id",
                )
                .await?,
            messages: conn
                .prepare(
                    "INSERT INTO message_packs (conversation_id, last_seq, first_seq, last_id,
                                                data)
                     SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[],
                                          $5::bytea[])",
                )
                .await?,
            leave: conn
                .prepare("DELETE FROM memberships WHERE user_id = $1 AND conversation_id = $2")
                .await?,
            join: conn
                .prepare(
                    "INSERT INTO memberships (user_id, conversation_id, joined_seq)
                     VALUES ($1, $2, $3)
                     ON CONFLICT (user_id, conversation_id)
                     DO UPDATE SET joined_seq = excluded.joined_seq",
                )
                .await?,
            cursors: conn
                .prepare(
                    "INSERT INTO cursors (device_id, conversation_id, seq)
                     SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[])
                     ON CONFLICT (device_id, conversation_id)
                     DO UPDATE SET seq = GREATEST(cursors.seq, excluded.seq)",
                )
                .await?,
            user_seen: conn
                .prepare("UPDATE users SET last_seen_at = $2 WHERE id = $1")
                .await?,
            device_seen: conn
                .prepare("UPDATE devices SET last_seen_at = $2 WHERE id = $1")
                .await?,
            password: conn
                .prepare("UPDATE users SET password_hash = $2 WHERE id = $1")
                .await?,
            token: conn
                .prepare(
                    "INSERT INTO tokens (hash, user_id, device_id, created_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .await?,
            revoke_device: conn
                .prepare(
                    "UPDATE tokens SET revoked_at = $3
                     WHERE user_id = $1 AND device_id = $2 AND revoked_at IS NULL",
                )
                .await?,
            revoke_others: conn
                .prepare(
                    "UPDATE tokens SET revoked_at = $3
                     WHERE user_id = $1 AND device_id <> $2 AND revoked_at IS NULL",
                )
                .await?,
            profile: conn
                .prepare(
                    "UPDATE users SET display_name = COALESCE($2, display_name),
                                      avatar = COALESCE($3, avatar) WHERE id = $1",
                )
                .await?,
            set_contact: conn
                .prepare(
                    "INSERT INTO contacts (user_id, contact_id, state, created_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (user_id, contact_id) DO UPDATE SET state = excluded.state",
                )
                .await?,
            drop_contact: conn
                .prepare("DELETE FROM contacts WHERE user_id = $1 AND contact_id = $2")
                .await?,
            file: conn
                .prepare(
                    "INSERT INTO files (hash, size, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT (hash) DO NOTHING",
                )
                .await?,
            attach: conn
                .prepare(
                    "INSERT INTO attachments (hash, conversation_id) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                )
                .await?,
            commit: conn.prepare("COMMIT").await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_takes_its_ids_a_block_at_a_time() {
        assert_eq!(ids_of(&[1], 3), vec![1, 2, 3]);
        let two = ids_of(&[65, 193], 100);
        assert_eq!(two.len(), 100);
        assert_eq!(two[..64], (65..129).collect::<Vec<_>>()[..]);
        assert_eq!(two[64..], (193..229).collect::<Vec<_>>()[..]);
        assert!(ids_of(&[], 0).is_empty());
    }
}
