//! Appending many messages, to many rooms, in one write transaction: the
//! work of one group commit ([`crate::group_commit`]).
//!
//! A batch runs a fixed number of statements whatever its size, so one
//! commit (one fsync) and a handful of round trips serve every message in
//! it:
//!
//! 1. lock the batch's live rooms, in id order ([`Dialect::ROOMS_LOG`]):
//!    the same lock a single append takes, taken in one order by every
//!    writer so that two batches on two replicas queue instead of
//!    deadlocking;
//! 2. find which senders are members of the rooms they send to;
//! 3. find the messages already stored under the batch's `client_msg_id`s
//!    (after the locks, so a concurrent identical send has committed);
//! 4. bump each room's `last_seq` by the number of new messages it gets;
//! 5. insert the new messages with consecutive seqs, in queue order.
//!
//! Each message gets the answer a single append would have given it: a
//! message for a missing room is `NotFound`, one from a non-member
//! `NotMember`, a repeated `client_msg_id` the stored message (or the one
//! earlier in the same batch) with `created = false`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use chat_core::{RoomId, Seq, UserId};

use super::rows::{self, db_err, event_cols, Columns};
use super::{stmt, AsExecutor, Dialect};
use crate::backend::Backend;
use crate::{Message, NewMessage, Result, StoreError};

/// What one append of a batch gets: the message and whether it is new.
pub(crate) type Appended = Result<(Message, bool)>;

/// Most messages one batch holds: 7 bound values per inserted row keep the
/// insert well under both drivers' parameter limits.
pub(crate) const MAX_BATCH: usize = 512;

/// The placeholder of the `n`th bound value (from 1), in a statement
/// whose values are bound in the order their placeholders appear:
/// numbered on Postgres, anonymous on SQLite ([`Dialect::NUMBERED`]).
fn param<D: Dialect>(n: usize) -> String {
    if D::NUMBERED {
        format!("${n}")
    } else {
        "?".to_owned()
    }
}

/// `(p1, p2, …), (…)`: `rows` tuples of `cols` placeholders, the first for
/// the `first`th bound value.
fn tuples<D: Dialect>(rows: usize, cols: usize, first: usize) -> String {
    let mut sql = String::with_capacity(rows * cols * 6);
    let mut n = first;
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&param::<D>(n));
            n += 1;
        }
        sql.push(')');
    }
    sql
}

/// `p1, p2, …`: `n` placeholders, the first for the `first`th value.
fn list<D: Dialect>(n: usize, first: usize) -> String {
    let items: Vec<String> = (first..first + n).map(param::<D>).collect();
    items.join(", ")
}

/// Appends `msgs` in one transaction; one answer per message, in order. An
/// `Err` is a failure of the whole batch (nothing of it committed).
pub(crate) async fn append_batch<B: Backend>(
    store: &B,
    msgs: &[&NewMessage],
) -> Result<Vec<Appended>> {
    let mut tx = store.write_tx().await?;
    let mut rooms: Vec<RoomId> = msgs.iter().map(|m| m.room_id).collect();
    rooms.sort_unstable();
    rooms.dedup();
    let live = lock_rooms::<B::Db>(tx.executor(), &rooms).await?;

    let mut pairs: Vec<(RoomId, UserId)> = msgs
        .iter()
        .filter(|m| live.contains(&m.room_id))
        .map(|m| (m.room_id, m.sender_id))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let members = memberships::<B::Db>(tx.executor(), &pairs).await?;

    let allowed: Vec<&NewMessage> = msgs
        .iter()
        .copied()
        .filter(|m| members.contains(&(m.room_id, m.sender_id)))
        .collect();
    let stored = already_sent::<B::Db>(tx.executor(), &allowed).await?;

    // Decide each message's fate; the new ones take their seqs below.
    enum Fate {
        Done(Appended),
        New,
        SameAs(usize),
    }
    let mut fates = Vec::with_capacity(msgs.len());
    let mut first_of: HashMap<(RoomId, UserId, &str), usize> = HashMap::new();
    let mut new_per_room: BTreeMap<RoomId, i64> = BTreeMap::new();
    for (i, &m) in msgs.iter().enumerate() {
        let key = (m.room_id, m.sender_id, m.client_msg_id.as_str());
        let fate = if !live.contains(&m.room_id) {
            Fate::Done(Err(StoreError::NotFound))
        } else if !members.contains(&(m.room_id, m.sender_id)) {
            Fate::Done(Err(StoreError::NotMember))
        } else if let Some(original) = stored.get(&key) {
            Fate::Done(Ok((original.clone(), false)))
        } else if let Some(&j) = first_of.get(&key) {
            Fate::SameAs(j)
        } else {
            first_of.insert(key, i);
            *new_per_room.entry(m.room_id).or_default() += 1;
            Fate::New
        };
        fates.push(fate);
    }

    let mut next = bump_seqs::<B::Db>(tx.executor(), &new_per_room).await?;
    let mut seqs: Vec<Option<Seq>> = vec![None; msgs.len()];
    let mut new = Vec::new();
    for (i, &m) in msgs.iter().enumerate() {
        if matches!(fates[i], Fate::New) {
            let seq = next
                .get_mut(&m.room_id)
                .ok_or_else(|| rows::corrupt(format!("room {} took no seq", m.room_id.0)))?;
            seqs[i] = Some(*seq);
            new.push((m, *seq));
            *seq += 1;
        }
    }
    insert::<B::Db>(tx.executor(), &new).await?;
    tx.commit().await.map_err(db_err)?;

    let message = |m: &NewMessage, seq: Seq| Message {
        room_id: m.room_id,
        seq,
        id: m.id,
        sender_id: m.sender_id,
        body: m.body.clone(),
        client_msg_id: m.client_msg_id.clone(),
        created_at: m.created_at,
        edited_at: None,
        deleted: false,
    };
    let mut out = Vec::with_capacity(msgs.len());
    for (i, fate) in fates.into_iter().enumerate() {
        out.push(match fate {
            Fate::Done(answer) => answer,
            Fate::New => Ok((message(msgs[i], seqs[i].unwrap_or_default()), true)),
            Fate::SameAs(j) => Ok((message(msgs[j], seqs[j].unwrap_or_default()), false)),
        });
    }
    Ok(out)
}

/// Locks the live rooms among `rooms` (sorted, distinct) for their logs;
/// the ones that are live.
async fn lock_rooms<'c, D: Dialect>(
    ex: impl sqlx::Executor<'c, Database = D>,
    rooms: &[RoomId],
) -> Result<HashSet<RoomId>> {
    if rooms.is_empty() {
        return Ok(HashSet::new());
    }
    let sql = D::ROOMS_LOG.replace("{ids}", &list::<D>(rooms.len(), 1));
    let mut q = stmt::<D>(&sql).transient();
    for r in rooms {
        q = q.bind_id(r.0);
    }
    q.fetch_all(ex)
        .await?
        .iter()
        .map(|row| row.id::<RoomId>("id"))
        .collect()
}

/// Which of the (room, user) `pairs` are memberships.
async fn memberships<'c, D: Dialect>(
    ex: impl sqlx::Executor<'c, Database = D>,
    pairs: &[(RoomId, UserId)],
) -> Result<HashSet<(RoomId, UserId)>> {
    if pairs.is_empty() {
        return Ok(HashSet::new());
    }
    // The VALUES list drives the join (CROSS JOIN keeps SQLite from
    // scanning memberships): one primary-key probe per pair.
    let sql = format!(
        "SELECT m.room_id, m.user_id FROM (VALUES {}) AS v CROSS JOIN memberships m \
         WHERE m.room_id = v.column1 AND m.user_id = v.column2",
        tuples::<D>(pairs.len(), 2, 1)
    );
    let mut q = stmt::<D>(&sql).transient();
    for (room, user) in pairs {
        q = q.bind_id(room.0).bind_id(user.0);
    }
    q.fetch_all(ex)
        .await?
        .iter()
        .map(|row| Ok((row.id("room_id")?, row.id("user_id")?)))
        .collect()
}

type SentKey<'a> = (RoomId, UserId, &'a str);

/// The stored messages among `msgs`' (room, sender, client_msg_id) keys.
async fn already_sent<'c, 'm, D: Dialect>(
    ex: impl sqlx::Executor<'c, Database = D>,
    msgs: &[&'m NewMessage],
) -> Result<HashMap<SentKey<'m>, Message>> {
    if msgs.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        concat!(
            "SELECT ",
            event_cols!(),
            " FROM (VALUES {}) AS v CROSS JOIN events e \
             WHERE e.room_id = v.column1 AND e.sender_id = v.column2 \
             AND e.client_msg_id = v.column3 AND e.kind = 'message'"
        ),
        tuples::<D>(msgs.len(), 3, 1)
    );
    let mut q = stmt::<D>(&sql).transient();
    for m in msgs {
        q = q
            .bind_id(m.room_id.0)
            .bind_id(m.sender_id.0)
            .bind(m.client_msg_id.as_str());
    }
    let found = q.fetch_all(ex).await?;
    let mut out = HashMap::with_capacity(found.len());
    for row in &found {
        let message = rows::message(row)?;
        // The key borrows from the batch, not the row.
        if let Some(m) = msgs.iter().find(|m| {
            m.room_id == message.room_id
                && m.sender_id == message.sender_id
                && m.client_msg_id == message.client_msg_id
        }) {
            out.insert((m.room_id, m.sender_id, m.client_msg_id.as_str()), message);
        }
    }
    Ok(out)
}

/// Adds each room's count to its `last_seq`; each room's first new seq.
async fn bump_seqs<'c, D: Dialect>(
    ex: impl sqlx::Executor<'c, Database = D>,
    counts: &BTreeMap<RoomId, i64>,
) -> Result<HashMap<RoomId, Seq>> {
    if counts.is_empty() {
        return Ok(HashMap::new());
    }
    // `CASE id WHEN id1 THEN n1 … END WHERE id IN (id1, …)`: the ids are
    // bound twice, so that values follow their placeholders in order.
    let mut cases = String::new();
    for k in 0..counts.len() {
        let _ = write!(
            cases,
            " WHEN {} THEN {}",
            param::<D>(2 * k + 1),
            param::<D>(2 * k + 2)
        );
    }
    let sql = format!(
        "UPDATE rooms SET last_seq = last_seq + CASE id{cases} END \
         WHERE id IN ({}) RETURNING id, last_seq",
        list::<D>(counts.len(), 2 * counts.len() + 1)
    );
    let mut q = stmt::<D>(&sql).transient();
    for (room, n) in counts {
        q = q.bind_id(room.0).bind(*n);
    }
    for room in counts.keys() {
        q = q.bind_id(room.0);
    }
    let mut first = HashMap::with_capacity(counts.len());
    for row in q.fetch_all(ex).await? {
        let room: RoomId = row.id("id")?;
        let last = row.int("last_seq")?;
        let n = counts.get(&room).copied().unwrap_or_default();
        first.insert(room, last - n + 1);
    }
    if first.len() != counts.len() {
        return Err(StoreError::NotFound);
    }
    Ok(first)
}

/// Inserts the new messages with their seqs, in one statement.
async fn insert<'c, D: Dialect>(
    ex: impl sqlx::Executor<'c, Database = D>,
    new: &[(&NewMessage, Seq)],
) -> Result<()> {
    if new.is_empty() {
        return Ok(());
    }
    let mut values = String::with_capacity(new.len() * 72);
    for k in 0..new.len() {
        // room_id, seq, message_id, sender_id, body, client_msg_id,
        // created_at: bound in this order, the other columns constant.
        let p: Vec<String> = (7 * k + 1..=7 * k + 7).map(param::<D>).collect();
        let _ = write!(
            values,
            "{}({}, {}, 'message', {}, {}, {}, {}, {}, NULL, FALSE, NULL)",
            if k == 0 { "" } else { ", " },
            p[0],
            p[1],
            p[2],
            p[3],
            p[4],
            p[5],
            p[6],
        );
    }
    let sql = format!(
        concat!("INSERT INTO events (", event_cols!(), ") VALUES {}"),
        values
    );
    let mut q = stmt::<D>(&sql).transient();
    for (m, seq) in new {
        q = q
            .bind_id(m.room_id.0)
            .bind(*seq)
            .bind_id(m.id.0)
            .bind_id(m.sender_id.0)
            .bind(m.body.as_str())
            .bind(Some(m.client_msg_id.as_str()))
            .bind(m.created_at);
    }
    let inserted = q.execute(ex).await?;
    if inserted != new.len() as u64 {
        return Err(rows::corrupt(format!(
            "inserted {inserted} of {} events",
            new.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::tuples;

    #[test]
    fn tuples_number_their_placeholders_in_order() {
        use sqlx::{Postgres, Sqlite};
        assert_eq!(tuples::<Postgres>(2, 3, 1), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(tuples::<Sqlite>(1, 2, 5), "(?, ?)");
        assert_eq!(super::list::<Postgres>(3, 4), "$4, $5, $6");
    }
}
