//! The recent-event cache.
//!
//! Every committed event is also copied to a per-room cache in the
//! Ephemeral store (Redis in the distributed mode), the newest
//! [`RoomConfig::recent_cache`] events of each room, so that resumes and
//! gateway backfills (`ListEvents` from near the end of the log) need not
//! read the store. An edit or deletion also rewrites its target message's
//! entry (and a deletion blanks the cached bodies of the message's edits).
//! Cache writes are best effort: a failure is logged and forgotten.
//!
//! Bounds: `keep` events per room, each at most a body's size (~16 KB; no
//! other per-event cap), and a total the ephemeral store enforces by
//! dropping whole rooms' caches: the least recently written past
//! `--recent-cache-bytes` in process, Redis's `maxmemory` with
//! `volatile-lru` in the distributed mode. Either is safe, as below.
//!
//! The store stays the truth, and `ListEvents` trusts the cache only when
//! it holds *every* event from `after_seq + 1` to the room's last seq (read
//! with the membership check), with no hole. A write that failed or is still
//! in flight (a writer commits seq N, then caches it) leaves a hole, so the
//! reader falls back to the store. Because such a run holds every later
//! event of each message in it, the reader also re-derives each message's
//! state from its edits and deletions (`settle`): a stale entry (a lost
//! or late rewrite of an edited message) is corrected, and a deleted
//! message's text never comes back.

use crate::{convert, RoomConfig};
use bytes::Bytes;
use chat_core::{RoomId, Seq};
use chat_ephemeral::Ephemeral;
use chat_proto::v1 as pb;
use chat_store::{Event, EventKind, Room, Store};
use prost::Message as _;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A room service's view of the cache: what it writes after each commit,
/// and the `ListEvents` pages it serves from it.
pub(crate) struct RecentCache {
    store: Arc<dyn Store>,
    ephemeral: Arc<dyn Ephemeral>,
    /// Events kept per room; 0: no cache.
    keep: usize,
}

impl RecentCache {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        ephemeral: Arc<dyn Ephemeral>,
        cfg: &RoomConfig,
    ) -> Self {
        Self {
            store,
            ephemeral,
            keep: cfg.recent_cache,
        }
    }

    /// After a commit: caches `event` with the entries its commit changed
    /// (`target`: the seq of the message an edit or deletion changed).
    pub(crate) async fn committed(&self, room: RoomId, event: &pb::RoomEvent, target: Option<Seq>) {
        if self.keep == 0 {
            return;
        }
        let mut entries = Vec::new();
        if let Some(target) = target {
            if matches!(event.kind, Some(pb::room_event::Kind::Deleted(_))) {
                entries = self.blanked_edits(room, target, event.seq).await;
            }
            // Read after the commit: a later edit or deletion may
            // already have changed it (readers settle either way).
            entries.extend(self.message_entry(room, target).await);
        }
        entries.push(event.clone());
        self.put(room, &entries).await;
    }

    /// Copies events to the room's recent-event cache; best effort.
    async fn put(&self, room: RoomId, events: &[pb::RoomEvent]) {
        if self.keep == 0 || events.is_empty() {
            return;
        }
        let entries: Vec<(Seq, Bytes)> = events
            .iter()
            .map(|e| (e.seq, Bytes::from(e.encode_to_vec())))
            .collect();
        if let Err(error) = self.ephemeral.cache_events(room, &entries, self.keep).await {
            // The event is durable; readers see the hole and use the store.
            tracing::warn!(%error, room_id = %room, "cannot cache room events");
        }
    }

    /// The message at `seq` in its current state, as the log shows it at
    /// that seq (to rewrite its cache entry after an edit or deletion).
    /// `None` when the cache is off or the store cannot say.
    async fn message_entry(&self, room: RoomId, seq: Seq) -> Option<pb::RoomEvent> {
        if self.keep == 0 {
            return None;
        }
        match self.store.message(room, seq).await {
            Ok(Some(m)) => Some(convert::event(&Event {
                room_id: room,
                seq,
                kind: EventKind::Message(m),
            })),
            Ok(None) => None,
            Err(error) => {
                // The stale entry is harmless: readers settle it (see `settle`).
                tracing::warn!(%error, room_id = %room, seq, "cannot reread an edited message");
                None
            }
        }
    }

    /// The cached edits of the message at `target` (between it and its
    /// deletion at `deleted_at`), with their bodies blanked, as the store
    /// blanked them: a deleted message's text does not linger in the cache.
    async fn blanked_edits(
        &self,
        room: RoomId,
        target: Seq,
        deleted_at: Seq,
    ) -> Vec<pb::RoomEvent> {
        let between = usize::try_from(deleted_at - target - 1).unwrap_or(0);
        let n = between.min(self.keep);
        if n == 0 {
            return Vec::new();
        }
        let cached = match self.ephemeral.cached_events(room, target, n).await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, room_id = %room, "cannot read the recent-event cache");
                return Vec::new();
            }
        };
        cached
            .into_iter()
            .filter(|(seq, _)| *seq < deleted_at)
            .filter_map(|(seq, bytes)| {
                let mut e = pb::RoomEvent::decode(bytes).ok()?;
                match &mut e.kind {
                    Some(pb::room_event::Kind::Edited(ed))
                        if e.seq == seq && ed.target_seq == target =>
                    {
                        ed.body.clear();
                        Some(e)
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// `ListEvents` from the recent-event cache, or `None` to ask the store:
    /// only when the cache holds every event from `after + 1` to the room's
    /// last seq, contiguously (see the module docs).
    pub(crate) async fn page(
        &self,
        room: &Room,
        after: Seq,
        limit: u32,
    ) -> Option<pb::ListEventsResponse> {
        let keep = self.keep;
        if keep == 0 {
            return None;
        }
        if after >= room.last_seq {
            // Up to date: nothing to read anywhere.
            return Some(pb::ListEventsResponse {
                items: Vec::new(),
                has_more: false,
            });
        }
        let wanted = usize::try_from(room.last_seq - after).ok()?;
        if wanted > keep {
            return None;
        }
        let cached = match self.ephemeral.cached_events(room.id, after, wanted).await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, room_id = %room.id, "recent-event cache unavailable");
                return None;
            }
        };
        if cached.len() != wanted {
            tracing::debug!(room_id = %room.id, after, "recent-event cache miss");
            return None;
        }
        let room_id = room.id.to_string();
        let mut run = Vec::with_capacity(wanted);
        for (expected, (seq, bytes)) in (after + 1..).zip(cached) {
            if seq != expected {
                tracing::debug!(room_id = %room.id, after, seq, "hole in the recent-event cache");
                return None;
            }
            let event = match pb::RoomEvent::decode(bytes) {
                Ok(e) if e.seq == seq && e.room_id == room_id && e.kind.is_some() => e,
                _ => {
                    tracing::warn!(room_id = %room.id, seq, "bad recent-event cache entry");
                    return None;
                }
            };
            run.push(event);
        }
        settle(&mut run);
        let has_more = run.len() > limit as usize;
        run.truncate(limit as usize);
        Some(pb::ListEventsResponse {
            items: run,
            has_more,
        })
    }
}

/// Brings a contiguous run of a room's log, read from the cache, to the
/// state the store shows: a message takes the body of its last edit in the
/// run; a message deleted (by a deletion in the run, or already a tombstone
/// in the cache) is a tombstone; and the edits of a deleted message have
/// no body. The run holds every event after its first, so every later edit
/// or deletion of each message in it is there: a stale message entry (a
/// rewrite that failed, or lost a race with a later one) cannot show.
fn settle(run: &mut [pb::RoomEvent]) {
    use pb::room_event::Kind;
    let mut deleted: HashSet<Seq> = HashSet::new();
    // target seq → (body, edited_at) of its last edit.
    let mut last_edit: HashMap<Seq, (String, String)> = HashMap::new();
    for e in run.iter() {
        match &e.kind {
            Some(Kind::Message(m)) if m.deleted => {
                deleted.insert(e.seq);
            }
            Some(Kind::Edited(ed)) => {
                last_edit.insert(ed.target_seq, (ed.body.clone(), ed.edited_at.clone()));
            }
            Some(Kind::Deleted(d)) => {
                deleted.insert(d.target_seq);
            }
            _ => {}
        }
    }
    if deleted.is_empty() && last_edit.is_empty() {
        return;
    }
    for e in run.iter_mut() {
        match &mut e.kind {
            Some(Kind::Message(m)) => {
                let edit = last_edit.get(&m.seq);
                if deleted.contains(&m.seq) {
                    m.deleted = true;
                    m.body.clear();
                    if let Some((_, at)) = edit {
                        m.edited_at = Some(at.clone());
                    }
                } else if let Some((body, at)) = edit {
                    m.body.clone_from(body);
                    m.edited_at = Some(at.clone());
                }
            }
            Some(Kind::Edited(ed)) if deleted.contains(&ed.target_seq) => ed.body.clear(),
            _ => {}
        }
    }
}
