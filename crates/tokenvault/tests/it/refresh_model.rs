//! A seeded model of the refresh protocol (docs/refresh-protocol.md): several
//! instances, a rotating provider with reuse detection, a simulated clock and
//! the real store statements (SQLite), driven one atomic step at a time in an
//! order a seeded random generator picks. Faults: pauses longer than any
//! lease, crashes (memory lost, journal kept), database outages, answers lost
//! on the wire, clock jumps.
//!
//! Property: no refresh token is presented after its successor was stored
//! or journaled — except for a grant whose provider answer was lost
//! (the unknowable case U1, which the model counts separately) — and at the
//! end every grant without such a loss holds, in the database, exactly the
//! refresh token the provider issued last.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::common::*;
use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenvault::domain::ConnectionId;
use tokenvault::store::{ConnectionStore, StoreError};

const ROWS: usize = 3;
const INSTANCES: usize = 3;
const LEASE: i64 = 30;
const IN_FLIGHT: i64 = 300;
const GRACE: i64 = 10;
const STEPS: usize = 400;

/// The provider: one grant per row, rotating on every refresh.
#[derive(Default)]
struct Provider {
    current: HashMap<ConnectionId, String>,
    consumed: HashMap<ConnectionId, HashSet<String>>,
    revoked: HashSet<ConnectionId>,
    issued: u64,
}

enum Presented {
    Rotated(String),
    Reuse,
    Revoked,
}

impl Provider {
    fn present(&mut self, id: ConnectionId, token: &str) -> Presented {
        if self.revoked.contains(&id) {
            return Presented::Revoked;
        }
        if self.current[&id] == token {
            self.issued += 1;
            let next = format!("rt-{}", self.issued);
            self.consumed
                .entry(id)
                .or_default()
                .insert(token.to_owned());
            self.current.insert(id, next.clone());
            return Presented::Rotated(next);
        }
        // Reuse detection: the whole grant is revoked.
        self.revoked.insert(id);
        Presented::Reuse
    }
}

#[derive(Clone, Debug)]
enum Phase {
    /// Leased at `version`, holding the token read at that version.
    Leased { version: i64, token: String },
    /// The token was presented (intent journaled); the answer is pending.
    Presenting { version: i64, token: String },
    /// The answer came; its write is pending (journaled).
    Answered { version: i64, token: String },
}

#[derive(Clone, Debug)]
enum JournalLine {
    Intent {
        id: ConnectionId,
        version: i64,
    },
    Answer {
        id: ConnectionId,
        version: i64,
        token: String,
    },
    Done {
        id: ConnectionId,
    },
}

struct Instance {
    owner: String,
    tasks: HashMap<ConnectionId, Phase>,
    /// The instance's journal file: survives a crash.
    journal: Vec<JournalLine>,
    /// Answers the database refused, to be drained.
    pending: HashMap<ConnectionId, (i64, String)>,
    paused_until: Option<DateTime<Utc>>,
    reachable_since: Option<DateTime<Utc>>,
    incarnation: u32,
}

impl Instance {
    fn new(n: usize) -> Self {
        Self {
            owner: format!("i{n}-0"),
            tasks: HashMap::new(),
            journal: Vec::new(),
            pending: HashMap::new(),
            paused_until: None,
            reachable_since: None,
            incarnation: 0,
        }
    }

    fn takeover_before(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self.reachable_since {
            Some(since) if now - since >= Duration::seconds(GRACE) => now,
            _ => DateTime::UNIX_EPOCH,
        }
    }
}

struct World {
    store: Arc<dyn ConnectionStore>,
    provider: Provider,
    instances: Vec<Instance>,
    now: DateTime<Utc>,
    db_down: bool,
    /// Grants whose answer was lost (U1): reuse there is unknowable.
    unknowable: HashSet<ConnectionId>,
    violations: Vec<String>,
    rng: StdRng,
    start: DateTime<Utc>,
    log: Vec<String>,
    refreshes: u64,
}

fn down() -> StoreError {
    StoreError::Unavailable {
        backend: "model",
        target: "db".into(),
        reason: "down".into(),
    }
}

fn token_of(record: &tokenvault::store::ConnectionRecord) -> String {
    String::from_utf8(record.refresh_token.clone().unwrap()).unwrap()
}

impl World {
    fn db<T>(&mut self, i: usize, result: Result<T, StoreError>) -> Result<T, StoreError> {
        let inst = &mut self.instances[i];
        match &result {
            Ok(_) => {
                inst.reachable_since.get_or_insert(self.now);
            }
            Err(_) => inst.reachable_since = None,
        }
        result
    }

    /// The write of a successful refresh (R5): CAS at the lease's version.
    async fn write_answer(
        &mut self,
        i: usize,
        id: ConnectionId,
        version: i64,
        token: &str,
    ) -> bool {
        if self.db_down {
            let _ = self.db(i, Err::<(), _>(down()));
            return false;
        }
        let record = self.store.get_by_id(id).await.unwrap().unwrap();
        let mut update = record.to_update(self.now);
        update.refresh_token = Some(token.as_bytes().to_vec());
        update.next_refresh_at = Some(self.now + Duration::seconds(self.rng.random_range(0..20)));
        update.lease = None;
        let written = self.store.update(id, version, &update).await;
        let _ = self.db(i, Ok(()));
        match written {
            Ok(_) => {
                self.refreshes += 1;
                self.log.push(format!(
                    "{} stored {token} for {id}",
                    self.instances[i].owner
                ));
            }
            Err(StoreError::Conflict { .. }) => {
                // The row moved: that must never happen to a journaled answer
                // of a live lease unless someone else presented meanwhile,
                // which the checks below catch at the provider.
                self.log.push(format!(
                    "{} lost its write for {id}",
                    self.instances[i].owner
                ));
            }
            Err(err) => panic!("{err}"),
        }
        self.instances[i].journal.push(JournalLine::Done { id });
        true
    }

    /// Drains journaled answers; true when none is left.
    async fn drain(&mut self, i: usize) -> bool {
        let pending: Vec<_> = self.instances[i]
            .pending
            .iter()
            .map(|(id, (v, t))| (*id, *v, t.clone()))
            .collect();
        for (id, version, token) in pending {
            if !self.write_answer(i, id, version, &token).await {
                return false;
            }
            self.instances[i].pending.remove(&id);
        }
        true
    }

    async fn claim(&mut self, i: usize) {
        if !self.drain(i).await {
            return;
        }
        if self.db_down {
            let _ = self.db(i, Err::<(), _>(down()));
            return;
        }
        let inst = &self.instances[i];
        let claimed = self
            .store
            .claim_due(
                self.now,
                2,
                &inst.owner,
                inst.takeover_before(self.now),
                self.now + Duration::seconds(LEASE),
            )
            .await;
        let claimed = self.db(i, claimed).unwrap();
        for record in claimed {
            self.log.push(format!(
                "{} claimed {} v{}",
                self.instances[i].owner, record.id, record.version
            ));
            let phase = Phase::Leased {
                version: record.version,
                token: token_of(&record),
            };
            self.instances[i].tasks.insert(record.id, phase);
        }
    }

    /// An on-demand reader: read, then acquire the lease on the row as read.
    async fn on_demand(&mut self, i: usize, id: ConnectionId) {
        if self.instances[i].tasks.contains_key(&id) || self.instances[i].pending.contains_key(&id)
        {
            return;
        }
        if self.db_down {
            let _ = self.db(i, Err::<(), _>(down()));
            return;
        }
        let record = self.store.get_by_id(id).await.unwrap().unwrap();
        let _ = self.db(i, Ok(()));
        let inst = &self.instances[i];
        let takeover = inst.takeover_before(self.now);
        if record
            .lease
            .as_ref()
            .is_some_and(|l| l.owner != inst.owner && l.expires_at > takeover)
        {
            return;
        }
        let token = token_of(&record);
        let acquired = self
            .store
            .acquire_lease(
                id,
                &inst.owner,
                record.version,
                takeover,
                self.now + Duration::seconds(LEASE),
            )
            .await
            .unwrap();
        if let Some(leased) = acquired {
            self.log.push(format!(
                "{} acquired {id} v{}",
                self.instances[i].owner, leased.version
            ));
            self.instances[i].tasks.insert(
                id,
                Phase::Leased {
                    version: leased.version,
                    token,
                },
            );
        }
    }

    async fn advance(&mut self, i: usize, id: ConnectionId) {
        let phase = self.instances[i].tasks[&id].clone();
        match phase {
            Phase::Leased { version, token } => {
                // R2: validate (and extend) the lease right before presenting.
                if self.db_down {
                    let _ = self.db(i, Err::<(), _>(down()));
                    return;
                }
                let owner = self.instances[i].owner.clone();
                let renewed = self
                    .store
                    .renew_lease(id, &owner, version, self.now + Duration::seconds(IN_FLIGHT))
                    .await
                    .unwrap();
                let _ = self.db(i, Ok(()));
                if !renewed {
                    self.log
                        .push(format!("{owner} lost the lease on {id}; not presenting"));
                    self.instances[i].tasks.remove(&id);
                    return;
                }
                self.instances[i]
                    .journal
                    .push(JournalLine::Intent { id, version });
                self.instances[i]
                    .tasks
                    .insert(id, Phase::Presenting { version, token });
            }
            Phase::Presenting { version, token } => {
                let owner = self.instances[i].owner.clone();
                match self.provider.present(id, &token) {
                    Presented::Rotated(next) => {
                        if self.rng.random_bool(0.02) {
                            // The answer is lost on the wire (U1): the live
                            // holder retries with the token it has.
                            self.unknowable.insert(id);
                            self.log
                                .push(format!("{owner} presented {token} for {id}: answer lost"));
                            self.instances[i].journal.push(JournalLine::Done { id });
                            self.instances[i]
                                .tasks
                                .insert(id, Phase::Leased { version, token });
                            return;
                        }
                        self.log
                            .push(format!("{owner} presented {token} for {id}: got {next}"));
                        self.instances[i].journal.push(JournalLine::Answer {
                            id,
                            version,
                            token: next.clone(),
                        });
                        self.instances[i].tasks.insert(
                            id,
                            Phase::Answered {
                                version,
                                token: next,
                            },
                        );
                    }
                    Presented::Reuse => {
                        self.log
                            .push(format!("{owner} presented {token} for {id}: REUSE"));
                        if !self.unknowable.contains(&id) {
                            self.violations.push(format!(
                                "{owner} presented the consumed token {token} of {id}"
                            ));
                        }
                        self.instances[i].journal.push(JournalLine::Done { id });
                        self.instances[i].tasks.remove(&id);
                    }
                    Presented::Revoked => {
                        self.instances[i].journal.push(JournalLine::Done { id });
                        self.instances[i].tasks.remove(&id);
                    }
                }
            }
            Phase::Answered { version, token } => {
                self.instances[i].tasks.remove(&id);
                if !self.write_answer(i, id, version, &token).await {
                    // Kept in the journal; the drainer stores it later.
                    self.instances[i].pending.insert(id, (version, token));
                }
            }
        }
    }

    /// Memory is lost; a new incarnation replays the journal.
    async fn crash_and_restart(&mut self, i: usize) {
        let inst = &mut self.instances[i];
        let old_owner = inst.owner.clone();
        inst.incarnation += 1;
        inst.owner = format!("i{i}-{}", inst.incarnation);
        inst.tasks.clear();
        inst.pending.clear();
        inst.paused_until = None;
        inst.reachable_since = None;
        let mut intents: HashMap<ConnectionId, i64> = HashMap::new();
        let mut answers: HashMap<ConnectionId, (i64, String)> = HashMap::new();
        for line in std::mem::take(&mut inst.journal) {
            match line {
                JournalLine::Intent { id, version } => {
                    intents.insert(id, version);
                }
                JournalLine::Answer { id, version, token } => {
                    intents.remove(&id);
                    answers.insert(id, (version, token));
                }
                JournalLine::Done { id } => {
                    intents.remove(&id);
                    answers.remove(&id);
                }
            }
        }
        self.log.push(format!(
            "{old_owner} crashed; {} answers, {} intents left",
            answers.len(),
            intents.len()
        ));
        inst.pending = answers;
        for (id, version) in intents {
            // U1: a call without an answer. Release the dead holder's lease.
            self.unknowable.insert(id);
            let record = self.store.get_by_id(id).await.unwrap().unwrap();
            if record.version == version
                && record.lease.as_ref().is_some_and(|l| l.owner == old_owner)
            {
                let mut update = record.to_update(self.now);
                update.lease = None;
                let _ = self.store.update(id, version, &update).await;
            }
        }
    }

    async fn step(&mut self, ids: &[ConnectionId]) {
        self.log.push(format!(
            "t={} db_down={} paused={:?}",
            (self.now - self.start).num_seconds(),
            self.db_down,
            self.instances
                .iter()
                .map(|i| i.paused_until.map(|p| (p - self.start).num_seconds()))
                .collect::<Vec<_>>()
        ));
        // Background work of every running instance: its journal drainer
        // keeps trying (R5), and a provider call in flight ends within the
        // HTTP timeout, long before a lease could run out.
        for i in 0..INSTANCES {
            if self.instances[i]
                .paused_until
                .is_some_and(|until| self.now < until)
            {
                continue;
            }
            if !self.instances[i].pending.is_empty() {
                self.drain(i).await;
            }
        }
        let roll = self.rng.random_range(0..100);
        let i = self.rng.random_range(0..INSTANCES);
        let paused = self.instances[i]
            .paused_until
            .is_some_and(|until| self.now < until);
        match roll {
            0..=4 => {
                for i in 0..INSTANCES {
                    if self.instances[i]
                        .paused_until
                        .is_some_and(|until| self.now < until)
                    {
                        continue;
                    }
                    // A running holder settles a call it started (the
                    // provider's answer, then its write) within the HTTP
                    // timeout, before much time passes.
                    for _ in 0..2 {
                        let mut settling: Vec<_> = self.instances[i]
                            .tasks
                            .iter()
                            .filter(|(_, phase)| {
                                matches!(phase, Phase::Presenting { .. } | Phase::Answered { .. })
                            })
                            .map(|(id, _)| *id)
                            .collect();
                        settling.sort();
                        for id in settling {
                            self.advance(i, id).await;
                        }
                    }
                }
                let by = Duration::seconds(self.rng.random_range(1..40));
                self.now += by;
            }
            // Assumption (docs/refresh-protocol.md, U2): an instance holding
            // answers the database refused is running when it returns.
            5..=6 if !paused && self.instances[i].pending.is_empty() => {
                // A pause longer than the lease (SIGSTOP, GC, a suspended VM).
                let secs = self.rng.random_range(LEASE..LEASE * 4);
                self.instances[i].paused_until = Some(self.now + Duration::seconds(secs));
            }
            7 if !self.db_down => self.db_down = true,
            8..=9 if self.db_down => self.db_down = false,
            10 if !paused && !self.db_down => self.crash_and_restart(i).await,
            11..=30 if !paused => self.claim(i).await,
            31..=45 if !paused => {
                let id = ids[self.rng.random_range(0..ids.len())];
                self.on_demand(i, id).await;
            }
            _ if !paused => {
                let mut ids: Vec<_> = self.instances[i].tasks.keys().copied().collect();
                ids.sort();
                if !ids.is_empty() {
                    let id = ids[self.rng.random_range(0..ids.len())];
                    self.advance(i, id).await;
                } else if !self.instances[i].pending.is_empty() {
                    self.drain(i).await;
                }
            }
            _ => {}
        }
        self.now += Duration::milliseconds(self.rng.random_range(0..1500));
    }
}

async fn run(seed: u64) -> (u64, usize, usize) {
    let (store, _dir) = sqlite_store().await;
    let store: Arc<dyn ConnectionStore> = Arc::new(store);
    let env = envelope(&key_spec("k1", 3));
    let start = now();
    let mut provider = Provider::default();
    let mut ids = Vec::new();
    for n in 0..ROWS {
        let record = store
            .upsert(
                new_connection(
                    &env,
                    &format!("u{n}"),
                    "spotify",
                    "AT",
                    Some("x"),
                    Some(start),
                )
                .await,
            )
            .await
            .unwrap();
        let initial = format!("rt-initial-{n}");
        let mut update = record.to_update(start);
        update.refresh_token = Some(initial.as_bytes().to_vec());
        store
            .update(record.id, record.version, &update)
            .await
            .unwrap();
        provider.current.insert(record.id, initial);
        ids.push(record.id);
    }
    let mut world = World {
        store,
        provider,
        instances: (0..INSTANCES).map(Instance::new).collect(),
        now: start,
        db_down: false,
        unknowable: HashSet::new(),
        violations: Vec::new(),
        rng: StdRng::seed_from_u64(seed),
        start,
        log: Vec::new(),
        refreshes: 0,
    };
    for _ in 0..STEPS {
        world.step(&ids).await;
    }
    // Quiesce: the database comes back, pauses end, every instance settles
    // what it holds (as live processes would).
    world.db_down = false;
    world.now += Duration::seconds(IN_FLIGHT + GRACE + 1);
    for inst in &mut world.instances {
        inst.paused_until = None;
    }
    for _ in 0..3 {
        for i in 0..INSTANCES {
            assert!(world.drain(i).await);
            let mut held: Vec<_> = world.instances[i].tasks.keys().copied().collect();
            held.sort();
            for id in held {
                for _ in 0..3 {
                    if world.instances[i].tasks.contains_key(&id) {
                        world.advance(i, id).await;
                    }
                }
            }
        }
    }
    for id in &ids {
        if world.unknowable.contains(id) {
            continue;
        }
        assert!(
            !world.provider.revoked.contains(id),
            "seed {seed}: grant {id} revoked without an unknowable case\n{}",
            world.log.join("\n")
        );
        let stored = world.store.get_by_id(*id).await.unwrap().unwrap();
        assert_eq!(
            token_of(&stored),
            world.provider.current[id],
            "seed {seed}: the database lost the rotated token of {id}\n{}",
            world.log.join("\n")
        );
    }
    assert!(
        world.violations.is_empty(),
        "seed {seed}: {:?}\n{}",
        world.violations,
        world.log.join("\n")
    );
    (
        world.refreshes,
        world.unknowable.len(),
        world.provider.revoked.len(),
    )
}

#[tokio::test]
async fn no_refresh_token_is_presented_after_its_successor_was_stored() {
    let seeds: u64 = std::env::var("TOKENVAULT_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let (mut refreshes, mut unknowable, mut revoked) = (0, 0, 0);
    for seed in 0..seeds {
        let (r, u, v) = run(seed).await;
        refreshes += r;
        unknowable += u;
        revoked += v;
    }
    eprintln!(
        "model: {seeds} seeds, {refreshes} refreshes stored, {unknowable} grants with a lost answer (U1), {revoked} revoked (all among them)"
    );
    assert!(
        refreshes > seeds * 5,
        "the model must actually refresh: {refreshes}"
    );
}
