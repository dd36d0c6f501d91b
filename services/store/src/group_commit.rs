//! Group commit: message appends share write transactions.
//!
//! An ack means committed and fsynced, and a commit costs about one fsync
//! whatever it holds, so committing each message on its own caps a store at
//! its disk's fsync rate (about 1,250 a second here on SQLite). Instead,
//! [`GroupCommit::append`] queues the message; writer tasks take every
//! append queued while their last commit ran (up to
//! [`append::MAX_BATCH`]) and commit them in one transaction
//! ([`append::append_batch`]). An idle writer starts a commit as soon as one
//! append arrives: there is no timer, so a lone message waits for nothing
//! but its own commit.
//!
//! The queue is bounded ([`DEFAULT_QUEUE`]): when it is full the append is
//! refused at once with [`StoreError::Busy`] (a 503 for the client, to
//! retry), so an overload turns into refusals, not into a queue that makes
//! every message wait seconds.
//!
//! A batch that fails as a whole for a reason other than a lost connection
//! (a constraint one row broke, a deadlock between replicas) is rolled back
//! and each of its appends is retried alone, so one bad message cannot fail
//! its neighbours.
//!
//! The writers hold the backend's pools but not the queue: when the last
//! handle to the store is dropped the queue closes, the writers finish
//! what they took and exit, and the pools close.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use crate::backend::Backend;
use crate::sql::append::{self, Appended};
use crate::sql::log;
use crate::{NewMessage, StoreError};

/// Appends that may wait for a writer before new ones are refused: at the
/// SQLite writer's ~20,000 a second, about 100 ms of work.
pub const DEFAULT_QUEUE: usize = 2048;

struct Job {
    msg: NewMessage,
    reply: oneshot::Sender<Appended>,
}

/// The queue in front of a store's writers; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct GroupCommit {
    queue: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("room", &self.msg.room_id)
            .finish()
    }
}

impl GroupCommit {
    /// Starts `writers` writer tasks on `store` (a handle without a queue
    /// of its own: its appends run directly) behind a queue of `queue`
    /// appends. Needs a Tokio runtime.
    ///
    /// With `own_thread`, the writers run on a thread of their own (a
    /// single-threaded runtime) rather than among the caller's tasks: a
    /// batch takes several round trips between the writer task and the
    /// database's own worker thread, and on a runtime busy with thousands
    /// of sockets each of them would wait its turn behind them (measured:
    /// the all-in-one's SQLite writer idled at 25% of a core while sends
    /// queued for seconds). For SQLite, whose connections are threads of
    /// their own, not sockets of a runtime.
    pub(crate) fn start<B: Backend + Clone>(
        store: B,
        writers: usize,
        queue: usize,
        own_thread: bool,
    ) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            let task = writer(store.clone(), Arc::clone(&rx));
            if !own_thread {
                tokio::spawn(task);
                continue;
            }
            let spawned = std::thread::Builder::new()
                .name("group-commit".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(task),
                        // The queue closes with the task: appends get
                        // `Unavailable`, never a hang.
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start the group-commit writer")
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the group-commit thread");
            }
        }
        Self { queue: tx }
    }

    /// Appends `msg` in the next batch; its answer once that has committed.
    pub(crate) async fn append(&self, msg: &NewMessage) -> Appended {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            msg: msg.clone(),
            reply,
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(StoreError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(gone()),
        }
        answer.await.map_err(|_| gone())?
    }
}

fn gone() -> StoreError {
    StoreError::Unavailable("the store's writer has stopped".into())
}

/// One writer: takes a batch (waiting for its first append, then taking
/// whatever else is queued, without waiting), commits it, answers it.
async fn writer<B: Backend>(store: B, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut jobs = Vec::with_capacity(append::MAX_BATCH);
    loop {
        {
            let mut rx = queue.lock().await;
            if rx.recv_many(&mut jobs, append::MAX_BATCH).await == 0 {
                return; // every handle is gone
            }
        }
        commit(&store, &mut jobs).await;
    }
}

/// Commits `jobs` as one batch and answers each; empties `jobs`.
async fn commit<B: Backend>(store: &B, jobs: &mut Vec<Job>) {
    let msgs: Vec<&NewMessage> = jobs.iter().map(|j| &j.msg).collect();
    let answers = match append::append_batch(store, &msgs).await {
        Ok(answers) => answers,
        // Alone, each append would meet the same fault.
        Err(e @ (StoreError::Unavailable(_) | StoreError::Busy)) => {
            tracing::warn!(error = %e, batch = msgs.len(), "group commit failed");
            msgs.iter().map(|_| Err(same_kind(&e))).collect()
        }
        Err(e) => {
            tracing::debug!(error = %e, batch = msgs.len(), "group commit failed; appending one by one");
            let mut answers = Vec::with_capacity(msgs.len());
            for m in &msgs {
                answers.push(log::append_one(store, m).await);
            }
            answers
        }
    };
    for (job, answer) in jobs.drain(..).zip(answers) {
        // A caller that went away still had its message committed.
        let _ = job.reply.send(answer);
    }
}

/// `e` again, for another caller (store errors are not `Clone`).
fn same_kind(e: &StoreError) -> StoreError {
    match e {
        StoreError::Busy => StoreError::Busy,
        other => StoreError::Unavailable(other.to_string().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::SqliteStore;
    use crate::{NewRoom, NewUser, RoomKind, Store, Visibility};
    use chat_core::{MessageId, RoomId, UserId};
    use std::time::Duration;

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_the_queued_appends_commit() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        let user = store
            .create_user(&NewUser {
                id: UserId::new(),
                username: "q".into(),
                display_name: "q".into(),
                password_hash: "h".into(),
                created_at: 1,
            })
            .await
            .unwrap();
        let room = NewRoom {
            id: RoomId::new(),
            name: "r".into(),
            topic: String::new(),
            visibility: Visibility::Public,
            kind: RoomKind::Group,
            created_at: 1,
        };
        store.create_room(&room, user.id).await.unwrap();
        let msg = |n: u32| NewMessage {
            room_id: room.id,
            id: MessageId::new(),
            sender_id: user.id,
            client_msg_id: format!("c{n}"),
            body: "hi".into(),
            created_at: 2,
        };
        // A queue of one in front of a writer that cannot start its commit:
        // the database's one connection is in a write transaction.
        let group = GroupCommit::start(store.direct(), 1, 1, true);
        let held = store.write_tx().await.unwrap();
        let (a, b) = (msg(1), msg(2));
        let first = tokio::spawn({
            let group = group.clone();
            async move { group.append(&a).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await; // the writer takes it
        let second = tokio::spawn({
            let group = group.clone();
            async move { group.append(&b).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await; // it waits in the queue
        let refused = tokio::time::timeout(Duration::from_secs(1), group.append(&msg(3)))
            .await
            .expect("refused at once, not queued");
        assert!(matches!(refused, Err(StoreError::Busy)), "{refused:?}");

        drop(held);
        let (first, second) = (first.await.unwrap(), second.await.unwrap());
        assert_eq!(first.unwrap().0.seq, 1);
        assert_eq!(second.unwrap().0.seq, 2);
        assert_eq!(store.room(room.id).await.unwrap().unwrap().last_seq, 2);
    }
}
