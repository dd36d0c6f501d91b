//! argon2id hashing as a bounded resource.
//!
//! Each hash or verify holds argon2's memory (19 MiB by default) on a
//! blocking thread, and tokio's blocking pool grows to 512 threads: a flood
//! of logins once took the all-in-one to 10 GiB. So every hash goes through
//! a [`Hasher`]: at most `concurrency` run at once, at most `queue` more
//! wait for a slot, and anything beyond is refused at once (429 with
//! Retry-After), before it allocates anything. Each slot keeps its argon2
//! memory and reuses it: allocated per hash, glibc kept the freed blocks
//! resident (558 MB after 300 signups at 19 MiB each), so memory stays
//! at `concurrency` x the argon2 memory cost, resident once used.

use argon2::password_hash::{
    rand_core::{OsRng, RngCore},
    Output, ParamsString, PasswordHash, Salt, SaltString,
};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use chat_core::ApiError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Cost parameters. The defaults are OWASP's argon2id minimum (19 MiB, t=2).
#[derive(Clone, Copy, Debug)]
pub struct HashCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
        }
    }
}

/// The default number of hashes at once: one per core.
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn hasher(cost: HashCost) -> Result<Argon2<'static>, ApiError> {
    let params = Params::new(cost.memory_kib, cost.iterations, 1, None).map_err(internal)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(&std::io::Error::other(e.to_string()))
}

/// argon2's working memory, one per slot, reused from hash to hash.
type Blocks = Vec<Block>;

/// `password` hashed by `a` with `salt` in `blocks` (grown to the cost
/// if short), as a PHC string's parts: what `PasswordHasher::hash_password`
/// gives, without allocating argon2's memory.
fn hash_in<'s>(
    a: &Argon2<'_>,
    algorithm: Algorithm,
    version: Version,
    password: &[u8],
    salt: Salt<'s>,
    output_len: usize,
    blocks: &mut Blocks,
) -> argon2::password_hash::Result<PasswordHash<'s>> {
    let need = a.params().block_count();
    if blocks.len() < need {
        blocks.resize(need, Block::default());
    }
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf)?;
    let output = Output::init_with(output_len, |out| {
        Ok(a.hash_password_into_with_memory(password, salt_bytes, out, &mut blocks[..])?)
    })?;
    Ok(PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: ParamsString::try_from(a.params())?,
        salt: Some(salt),
        hash: Some(output),
    })
}

/// Whether `password` is the one behind `parsed` (its own algorithm,
/// version and parameters). A hash costlier than `cost` (made before the
/// cost was lowered) is checked in memory of its own, not in the slot's.
fn check_in(
    parsed: &PasswordHash<'_>,
    password: &[u8],
    cost: HashCost,
    blocks: &mut Blocks,
) -> argon2::password_hash::Result<bool> {
    let algorithm = Algorithm::try_from(parsed.algorithm)?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()?
        .unwrap_or_default();
    let params = Params::try_from(parsed)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Ok(false);
    };
    let a = Argon2::new(algorithm, version, params);
    let mut own = Blocks::new();
    let blocks = if a.params().m_cost() > cost.memory_kib {
        &mut own
    } else {
        blocks
    };
    let computed = hash_in(
        &a,
        algorithm,
        version,
        password,
        salt,
        expected.len(),
        blocks,
    )?;
    // `Output`'s equality is constant-time.
    Ok(computed.hash == Some(expected))
}

/// The outcome of checking a password against a stored hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    pub ok: bool,
    /// The stored hash was made with other parameters than the current
    /// ones: worth replacing once the password is known to be right.
    pub stale: bool,
}

/// Runs argon2 on the blocking pool, a bounded number at a time.
pub struct Hasher {
    cost: HashCost,
    slots: Arc<Semaphore>,
    /// argon2's memory of the slots not running, for the next hashes.
    memory: Arc<Mutex<Vec<Blocks>>>,
    /// Hashes running or waiting for a slot.
    admitted: Arc<AtomicUsize>,
    max_admitted: usize,
    /// What an unknown username is verified against: a PHC string with the
    /// current parameters (and a random salt and output that no password
    /// matches), so its verify costs what a real user's does.
    dummy: String,
}

impl Hasher {
    /// `concurrency` hashes at once (at least one), `queue` more waiting.
    pub fn new(cost: HashCost, concurrency: usize, queue: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            cost,
            slots: Arc::new(Semaphore::new(concurrency)),
            memory: Arc::default(),
            admitted: Arc::new(AtomicUsize::new(0)),
            max_admitted: concurrency + queue,
            dummy: dummy_phc(cost),
        }
    }

    /// A place among the hashes running or waiting, or `rate_limited`
    /// (retry in 1 s) at once when they are all taken. Take it before
    /// counting an attempt: a refusal for a busy server is not an attempt.
    pub fn admit(&self) -> Result<Ticket<'_>, ApiError> {
        match Admitted::enter(&self.admitted, self.max_admitted) {
            Some(admitted) => Ok(Ticket {
                hasher: self,
                admitted,
            }),
            None => {
                tracing::debug!("password hashing is saturated; refused");
                Err(ApiError::rate_limited(1))
            }
        }
    }

    /// Hashes a password into a PHC string with the current parameters.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.admit()?.hash(password).await
    }

    /// [`Ticket::verify`], admitted first.
    pub async fn verify(
        &self,
        password: String,
        phc: Option<String>,
    ) -> Result<Verified, ApiError> {
        self.admit()?.verify(password, phc).await
    }
}

/// An admitted hash or verify ([`Hasher::admit`]): it runs when a slot is
/// free, and holds its place until it has.
pub struct Ticket<'a> {
    hasher: &'a Hasher,
    admitted: Admitted,
}

impl Ticket<'_> {
    /// Hashes a password into a PHC string with the current parameters.
    pub async fn hash(self, password: String) -> Result<String, ApiError> {
        let cost = self.hasher.cost;
        self.run(move |blocks| {
            let salt = SaltString::generate(&mut OsRng);
            let a = hasher(cost)?;
            let output_len = Params::DEFAULT_OUTPUT_LEN;
            hash_in(
                &a,
                Algorithm::Argon2id,
                Version::V0x13,
                password.as_bytes(),
                salt.as_salt(),
                output_len,
                blocks,
            )
            .map(|h| h.to_string())
            .map_err(internal)
        })
        .await?
    }

    /// Checks a password against a stored PHC string (its own parameters
    /// apply), or, for a user who does not exist (`None`), against the
    /// dummy hash: same cost, never a match.
    pub async fn verify(self, password: String, phc: Option<String>) -> Result<Verified, ApiError> {
        let exists = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.hasher.dummy.clone());
        let cost = self.hasher.cost;
        self.run(move |blocks| {
            let Ok(parsed) = PasswordHash::new(&phc) else {
                tracing::error!("stored password hash is not a PHC string");
                return Verified {
                    ok: false,
                    stale: false,
                };
            };
            let ok = check_in(&parsed, password.as_bytes(), cost, blocks).unwrap_or(false);
            Verified {
                ok: ok && exists,
                stale: is_stale(&parsed, cost),
            }
        })
        .await
    }

    /// Runs `f` on the blocking pool once a slot is free. The slot and
    /// the place go with `f`, so a caller that gives up does not free them
    /// before argon2's memory is.
    async fn run<T, F>(self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Blocks) -> T + Send + 'static,
    {
        let slot = self
            .hasher
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ApiError::internal(&e))?;
        let admitted = self.admitted;
        let memory = self.hasher.memory.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _g = span.enter();
            // A slot's memory: at most one per slot exists, as each is
            // taken with a slot and given back before the slot is.
            let mut blocks = memory
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .unwrap_or_default();
            let out = f(&mut blocks);
            memory
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(blocks);
            drop((slot, admitted));
            out
        })
        .await
        .map_err(|e| ApiError::internal(&e))
    }
}

/// One hash counted against the hasher's bound until dropped.
struct Admitted(Arc<AtomicUsize>);

impl Admitted {
    fn enter(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Admitted(count.clone()))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether `parsed` was made otherwise than argon2id v19 at `cost`.
fn is_stale(parsed: &PasswordHash<'_>, cost: HashCost) -> bool {
    let Ok(params) = Params::try_from(parsed) else {
        return true;
    };
    parsed.algorithm.as_str() != Algorithm::Argon2id.ident().as_str()
        || parsed.version != Some(Version::V0x13.into())
        || params.m_cost() != cost.memory_kib
        || params.t_cost() != cost.iterations
        || params.p_cost() != 1
}

/// A PHC string with `cost`'s parameters, a random salt and a random
/// output: verifying against it runs argon2 in full and never matches.
fn dummy_phc(cost: HashCost) -> String {
    let salt = SaltString::generate(&mut OsRng);
    let mut output = [0u8; 32];
    OsRng.fill_bytes(&mut output);
    format!(
        "$argon2id$v=19$m={},t={},p=1${}${}",
        cost.memory_kib,
        cost.iterations,
        salt.as_str(),
        STANDARD_NO_PAD.encode(output)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const CHEAP: HashCost = HashCost {
        memory_kib: 1024,
        iterations: 1,
    };

    #[tokio::test]
    async fn hashes_are_the_argon2_crates_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let h = Hasher::new(CHEAP, 1, 0);
        // Ours, checked by the crate.
        let ours = h.hash("correct horse".into()).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        let crate_hasher = hasher(CHEAP).unwrap();
        assert!(crate_hasher
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        assert!(crate_hasher.verify_password(b"wrong", &parsed).is_err());
        // The crate's (as stored before), checked by ours, argon2i too.
        for algorithm in [Algorithm::Argon2id, Algorithm::Argon2i] {
            let params = Params::new(CHEAP.memory_kib, CHEAP.iterations, 1, None).unwrap();
            let theirs = Argon2::new(algorithm, Version::V0x13, params)
                .hash_password(b"pw", &SaltString::generate(&mut OsRng))
                .unwrap()
                .to_string();
            let v = h.verify("pw".into(), Some(theirs.clone())).await.unwrap();
            assert!(v.ok, "{theirs}");
            assert_eq!(v.stale, algorithm != Algorithm::Argon2id);
            assert!(!h.verify("pW".into(), Some(theirs)).await.unwrap().ok);
        }
    }

    #[tokio::test]
    async fn each_slot_keeps_one_block_of_memory() {
        let h = Arc::new(Hasher::new(CHEAP, 2, 8));
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let h = h.clone();
                tokio::spawn(async move { h.hash(format!("pw{i}")).await })
            })
            .collect();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        let kept = h.memory.lock().unwrap();
        assert!((1..=2).contains(&kept.len()), "{} kept", kept.len());
        let blocks = Params::new(CHEAP.memory_kib, 1, 1, None)
            .unwrap()
            .block_count();
        assert!(kept.iter().all(|b| b.len() == blocks));
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let h = Hasher::new(CHEAP, 2, 2);
        let phc = h.hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$"));
        let right = h.verify("correct horse".into(), Some(phc.clone()));
        assert_eq!(
            right.await.unwrap(),
            Verified {
                ok: true,
                stale: false
            }
        );
        let wrong = h.verify("wrong horse".into(), Some(phc)).await.unwrap();
        assert!(!wrong.ok);
        let garbage = h.verify("x".into(), Some("garbage".into()));
        assert!(!garbage.await.unwrap().ok);
    }

    #[tokio::test]
    async fn the_dummy_hash_costs_what_a_current_hash_costs() {
        let h = Hasher::new(CHEAP, 1, 0);
        let parsed = PasswordHash::new(&h.dummy).expect("the dummy is a PHC string");
        assert!(!is_stale(&parsed, CHEAP), "{}", h.dummy);
        let v = h.verify("not a password".into(), None).await.unwrap();
        assert_eq!(
            v,
            Verified {
                ok: false,
                stale: false
            }
        );
    }

    #[tokio::test]
    async fn a_hash_with_other_parameters_is_stale() {
        let old = Hasher::new(CHEAP, 1, 0);
        let phc = old.hash("pw".into()).await.unwrap();
        let new = Hasher::new(
            HashCost {
                memory_kib: 2048,
                iterations: 1,
            },
            1,
            0,
        );
        let v = new.verify("pw".into(), Some(phc)).await.unwrap();
        assert_eq!(
            v,
            Verified {
                ok: true,
                stale: true
            }
        );
    }

    #[tokio::test]
    async fn beyond_the_slots_and_the_queue_hashes_are_refused_at_once() {
        let h = Arc::new(Hasher::new(
            HashCost {
                memory_kib: 8 * 1024,
                iterations: 2,
            },
            1,
            1,
        ));
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(async move { h.hash("pw".into()).await })
            })
            .collect();
        let mut refused = 0;
        for c in calls {
            let r = tokio::time::timeout(Duration::from_secs(30), c)
                .await
                .expect("no hash hangs")
                .unwrap();
            if let Err(e) = r {
                assert_eq!(e.code, chat_core::ErrorCode::RateLimited);
                assert_eq!(e.retry_after, Some(1));
                refused += 1;
            }
        }
        assert!(refused >= 2, "1 running + 1 waiting; refused {refused}");
        assert_eq!(h.admitted.load(Ordering::Acquire), 0, "every slot is back");
        h.hash("pw".into()).await.expect("a free hasher hashes");
    }
}
