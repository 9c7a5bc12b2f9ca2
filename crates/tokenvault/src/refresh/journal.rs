//! The refresh journal: what this process knows about its provider calls
//! that the database may not know yet (docs/refresh-protocol.md, rule R5).
//!
//! Three kinds of line, appended to a file of this process's own:
//! - `intent`: a refresh token of row `id` at `version` is about to be
//!   presented to the provider;
//! - `answer`: the provider answered with new tokens (sealed, as they will
//!   be stored), to be written at `version`;
//! - `done`: the row's outcome is settled (written, or the call failed
//!   definitely), nothing is left to do.
//!
//! Lines are written with `write(2)` before the step they announce and
//! `fsync`ed only when a database write failed, so the hot path pays a
//! system call, not a disk flush: a killed process loses nothing (the page
//! cache survives it); a power loss in the milliseconds between a
//! provider's answer and its database write is the one unrecoverable case.
//!
//! A process holds an exclusive lock on its file for its life. At start-up
//! every unlocked journal in the directory is an orphan of a process that
//! died: its answers are replayed (compare-and-swap at the journaled
//! version), its unanswered intents counted as outcomes unknown and their
//! in-flight leases released.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::domain::{ConnectionId, ConnectionStatus, Scopes};
use crate::store::{ConnectionUpdate, OutboxEvent, StoreError, from_millis, to_millis};

/// A journal past this size is truncated once nothing in it is pending.
const COMPACT_AFTER_BYTES: u64 = 4 << 20;

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Line {
    Open { owner: String },
    Intent { id: String, version: i64 },
    Answer(Box<Answered>),
    Done { id: String },
}

/// A provider's answer, as the row update that stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Answered {
    id: String,
    /// The version the holder's lease was validated at; the write is a
    /// compare-and-swap on it.
    version: i64,
    status: String,
    scopes: String,
    token_type: String,
    expires_at: Option<i64>,
    next_refresh_at: Option<i64>,
    last_refreshed_at: Option<i64>,
    access_token: Option<String>,
    refresh_token: Option<String>,
    metadata: serde_json::Value,
    updated_at: i64,
    events: Vec<JournalEvent>,
    #[serde(default)]
    history: Vec<crate::store::HistoryEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JournalEvent {
    id: uuid::Uuid,
    event_type: String,
    payload: String,
    created_at: i64,
}

impl Answered {
    fn new(id: ConnectionId, version: i64, update: &ConnectionUpdate) -> Self {
        Self {
            id: id.to_string(),
            version,
            status: update.status.as_str().to_owned(),
            scopes: update.scopes.format(" "),
            token_type: update.token_type.as_str().to_owned(),
            expires_at: update.expires_at.map(to_millis),
            next_refresh_at: update.next_refresh_at.map(to_millis),
            last_refreshed_at: update.last_refreshed_at.map(to_millis),
            access_token: update.access_token.as_ref().map(|t| B64.encode(t)),
            refresh_token: update.refresh_token.as_ref().map(|t| B64.encode(t)),
            metadata: update.metadata.clone(),
            updated_at: to_millis(update.updated_at),
            events: update
                .emit
                .iter()
                .map(|e| JournalEvent {
                    id: e.id,
                    event_type: e.event_type.clone(),
                    payload: e.payload.clone(),
                    created_at: to_millis(e.created_at),
                })
                .collect(),
            history: update.history.clone(),
        }
    }

    pub(crate) fn id(&self) -> Result<ConnectionId, StoreError> {
        ConnectionId::parse(&self.id).map_err(|e| StoreError::Corrupt(format!("journal id: {e}")))
    }

    pub(crate) fn version(&self) -> i64 {
        self.version
    }

    /// The update a successful refresh writes (see `store_refreshed`).
    pub(crate) fn to_update(&self) -> Result<ConnectionUpdate, StoreError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("journal {what}: {e}"))
        };
        let time = |ms: Option<i64>| ms.map(from_millis).transpose();
        let bytes = |b64: &Option<String>| {
            b64.as_ref()
                .map(|t| B64.decode(t).map_err(|e| corrupt("token", &e)))
                .transpose()
        };
        Ok(ConnectionUpdate {
            status: self
                .status
                .parse::<ConnectionStatus>()
                .map_err(|e| corrupt("status", &e))?,
            scopes: Scopes::parse(&self.scopes, " "),
            token_type: self
                .token_type
                .parse()
                .map_err(|e| corrupt("token_type", &e))?,
            expires_at: time(self.expires_at)?,
            next_refresh_at: time(self.next_refresh_at)?,
            refresh_attempts: 0,
            last_error: None,
            last_refreshed_at: time(self.last_refreshed_at)?,
            failing_since: None,
            access_token: bytes(&self.access_token)?,
            refresh_token: bytes(&self.refresh_token)?,
            metadata: self.metadata.clone(),
            lease: None,
            updated_at: from_millis(self.updated_at)?,
            emit: self
                .events
                .iter()
                .map(|e| {
                    Ok(OutboxEvent {
                        id: e.id,
                        event_type: e.event_type.clone(),
                        payload: e.payload.clone(),
                        created_at: from_millis(e.created_at)?,
                    })
                })
                .collect::<Result<_, StoreError>>()?,
            history: self.history.clone(),
        })
    }
}

/// A provider call that a dead process started and never settled.
#[derive(Debug, Clone)]
pub(crate) struct Unsettled {
    pub id: ConnectionId,
    pub version: i64,
    pub owner: String,
}

#[derive(Default)]
struct State {
    file: Option<File>,
    bytes: u64,
    /// Answers not yet in the database, this process's and orphans'.
    pending: HashMap<ConnectionId, Answered>,
    /// This process's provider calls under way.
    intents: HashMap<ConnectionId, i64>,
    /// Orphans' calls without an answer, still to be resolved.
    unsettled: Vec<Unsettled>,
    /// Orphan files (locked by us) to delete once drained.
    orphans: Vec<(PathBuf, File)>,
    /// Why the file stopped taking lines, once it did.
    broken: Option<String>,
}

/// See the module documentation.
pub struct Journal {
    owner: String,
    path: Option<PathBuf>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Journal {
    /// A journal kept in memory only: answers the database refused are
    /// still retried until it takes them, but a crash loses them.
    pub fn in_memory(owner: &str) -> Self {
        Self {
            owner: owner.to_owned(),
            path: None,
            state: Mutex::new(State::default()),
        }
    }

    /// Opens a journal file for `owner` in `dir` (created if missing) and
    /// takes over the journals of dead processes found there.
    pub fn open(dir: &Path, owner: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut state = State::default();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|ext| ext != "journal") {
                continue;
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            if file.try_lock().is_err() {
                continue; // a live process's
            }
            read_orphan(&file, &mut state)?;
            state.orphans.push((path, file));
        }
        // Journals of processes that stopped with nothing left to do go at
        // once (every restart leaves one).
        delete_drained_orphans(&mut state);
        let name = format!(
            "{}.journal",
            owner.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
        );
        let path = dir.join(name);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)?;
        file.lock()?;
        file.set_len(0)?;
        state.file = Some(file);
        let journal = Self {
            owner: owner.to_owned(),
            path: Some(path),
            state: Mutex::new(state),
        };
        journal.append(&Line::Open {
            owner: owner.to_owned(),
        });
        journal.sync();
        let state = journal.state.lock().unwrap();
        if let Some(reason) = &state.broken {
            return Err(std::io::Error::other(reason.clone()));
        }
        if !state.pending.is_empty() || !state.unsettled.is_empty() {
            tracing::warn!(
                answers = state.pending.len(),
                unsettled = state.unsettled.len(),
                "found the refresh journal of a stopped process; replaying it"
            );
        }
        drop(state);
        Ok(journal)
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn append(&self, line: &Line) {
        let mut state = self.state.lock().unwrap();
        append_locked(&mut state, line);
    }

    /// Before presenting the refresh token of `id` at `version`.
    pub(crate) fn intent(&self, id: ConnectionId, version: i64) {
        let mut state = self.state.lock().unwrap();
        state.intents.insert(id, version);
        append_locked(
            &mut state,
            &Line::Intent {
                id: id.to_string(),
                version,
            },
        );
    }

    /// The provider answered `id`'s refresh with `update`, to be written at
    /// `version`.
    pub(crate) fn answer(&self, id: ConnectionId, version: i64, update: &ConnectionUpdate) {
        let answered = Answered::new(id, version, update);
        let mut state = self.state.lock().unwrap();
        state.intents.remove(&id);
        append_locked(&mut state, &Line::Answer(Box::new(answered.clone())));
        state.pending.insert(id, answered);
    }

    /// Nothing is left to do for `id` (stored, or the call failed).
    pub(crate) fn settle(&self, id: ConnectionId) {
        let mut state = self.state.lock().unwrap();
        let was_open = state.intents.remove(&id).is_some() | state.pending.remove(&id).is_some();
        if was_open {
            append_locked(&mut state, &Line::Done { id: id.to_string() });
        }
        if state.pending.is_empty() && state.intents.is_empty() && state.bytes > COMPACT_AFTER_BYTES
        {
            compact_locked(&mut state, &self.owner);
        }
    }

    /// Flushes the file to disk: the database just refused an answer.
    pub(crate) fn sync(&self) {
        let mut state = self.state.lock().unwrap();
        if let Some(file) = &state.file
            && let Err(err) = file.sync_data()
        {
            state.broken = Some(err.to_string());
            tracing::error!(error = %err, "cannot flush the refresh journal");
        }
    }

    pub(crate) fn has_pending(&self, id: ConnectionId) -> bool {
        self.state.lock().unwrap().pending.contains_key(&id)
    }

    pub(crate) fn is_drained(&self) -> bool {
        let state = self.state.lock().unwrap();
        state.pending.is_empty() && state.unsettled.is_empty()
    }

    /// Answers waiting for the database, oldest first by version.
    pub(crate) fn pending(&self) -> Vec<Answered> {
        let mut pending: Vec<_> = self
            .state
            .lock()
            .unwrap()
            .pending
            .values()
            .cloned()
            .collect();
        pending.sort_by_key(|a| a.version);
        pending
    }

    pub(crate) fn unsettled(&self) -> Vec<Unsettled> {
        self.state.lock().unwrap().unsettled.clone()
    }

    pub(crate) fn resolve_unsettled(&self, id: ConnectionId) {
        let mut state = self.state.lock().unwrap();
        state.unsettled.retain(|u| u.id != id);
        delete_drained_orphans(&mut state);
    }

    /// A pending answer reached the database (or can never).
    pub(crate) fn stored(&self, id: ConnectionId) {
        self.settle(id);
        delete_drained_orphans(&mut self.state.lock().unwrap());
    }
}

fn append_locked(state: &mut State, line: &Line) {
    if state.broken.is_some() {
        return;
    }
    let Some(file) = &mut state.file else {
        return;
    };
    let mut buffer = serde_json::to_vec(line).expect("journal lines serialize");
    buffer.push(b'\n');
    match file.write_all(&buffer) {
        Ok(()) => state.bytes += buffer.len() as u64,
        Err(err) => {
            tracing::error!(error = %err, "cannot write the refresh journal; refreshes go on without it");
            metrics::counter!("tokenvault_refresh_journal_errors_total").increment(1);
            state.broken = Some(err.to_string());
        }
    }
}

fn compact_locked(state: &mut State, owner: &str) {
    if let Some(file) = &state.file {
        if let Err(err) = file.set_len(0) {
            tracing::warn!(error = %err, "cannot compact the refresh journal");
            return;
        }
        state.bytes = 0;
        append_locked(
            state,
            &Line::Open {
                owner: owner.to_owned(),
            },
        );
    }
}

/// Orphan files are deleted once nothing of theirs is left (checked
/// coarsely: nothing pending at all).
fn delete_drained_orphans(state: &mut State) {
    if state.unsettled.is_empty() && state.pending.is_empty() {
        for (path, file) in state.orphans.drain(..) {
            let _ = std::fs::remove_file(&path);
            drop(file);
        }
    }
}

/// Folds a dead process's journal into what is left to do.
fn read_orphan(file: &File, state: &mut State) -> std::io::Result<()> {
    let mut owner = String::new();
    let mut intents: HashMap<String, i64> = HashMap::new();
    let mut answers: HashMap<String, Answered> = HashMap::new();
    for line in BufReader::new(file).lines() {
        let line = line?;
        // A torn last line (killed mid-write) is skipped: its step never
        // happened as far as anyone else can tell.
        let Ok(parsed) = serde_json::from_str::<Line>(&line) else {
            continue;
        };
        match parsed {
            Line::Open { owner: o } => owner = o,
            Line::Intent { id, version } => {
                intents.insert(id, version);
            }
            Line::Answer(answered) => {
                intents.remove(&answered.id);
                answers.insert(answered.id.clone(), *answered);
            }
            Line::Done { id } => {
                intents.remove(&id);
                answers.remove(&id);
            }
        }
    }
    for (id, answered) in answers {
        if let Ok(id) = ConnectionId::parse(&id) {
            state.pending.insert(id, answered);
        }
    }
    for (id, version) in intents {
        if let Ok(id) = ConnectionId::parse(&id) {
            state.unsettled.push(Unsettled {
                id,
                version,
                owner: owner.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TokenType;

    fn update(token: &str) -> ConnectionUpdate {
        let now = chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
        ConnectionUpdate {
            status: ConnectionStatus::Connected,
            scopes: Scopes::parse("a b", " "),
            token_type: TokenType::Bearer,
            expires_at: Some(now),
            next_refresh_at: Some(now),
            refresh_attempts: 0,
            last_error: None,
            last_refreshed_at: Some(now),
            failing_since: None,
            access_token: Some(b"sealed-access".to_vec()),
            refresh_token: Some(token.as_bytes().to_vec()),
            metadata: serde_json::json!({"k": 1}),
            lease: None,
            updated_at: now,
            emit: Vec::new(),
            history: vec![crate::store::HistoryEntry::new(
                crate::store::HistoryKind::Recovered,
                ConnectionId::new(),
                &crate::domain::UserId::parse("fan-1").unwrap(),
                &crate::domain::IntegrationKey::parse("spotify").unwrap(),
                ConnectionStatus::Connected,
                now,
            )],
        }
    }

    #[test]
    fn a_dead_process_journal_is_taken_over_with_its_answers_and_unsettled_calls() {
        let dir = tempfile::tempdir().unwrap();
        let (answered, unanswered, settled) = (
            ConnectionId::new(),
            ConnectionId::new(),
            ConnectionId::new(),
        );
        {
            let dead = Journal::open(dir.path(), "instance-dead").unwrap();
            dead.intent(answered, 7);
            dead.answer(answered, 7, &update("rt-new"));
            dead.intent(unanswered, 3);
            dead.intent(settled, 5);
            dead.answer(settled, 5, &update("rt-stored"));
            dead.stored(settled);
            // A live process's journal is locked: nobody else takes it.
            let live = Journal::open(dir.path(), "instance-live").unwrap();
            assert!(live.is_drained(), "a locked journal is not an orphan");
        } // both processes die (their locks go with them)
        let heir = Journal::open(dir.path(), "instance-heir").unwrap();
        let pending = heir.pending();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].id().unwrap(), answered);
        assert_eq!(pending[0].version(), 7);
        let replayed = pending[0].to_update().unwrap();
        assert_eq!(replayed.refresh_token.as_deref(), Some(&b"rt-new"[..]));
        assert_eq!(replayed.scopes, Scopes::parse("a b", " "));
        // The history entry commits with the replayed write, as it would have.
        let kinds: Vec<_> = replayed
            .history
            .iter()
            .map(|entry| (entry.kind, entry.user_id.as_str()))
            .collect();
        assert_eq!(kinds, [(crate::store::HistoryKind::Recovered, "fan-1")]);
        let unsettled = heir.unsettled();
        assert_eq!(unsettled.len(), 1);
        assert_eq!(unsettled[0].id, unanswered);
        assert_eq!(unsettled[0].version, 3);
        assert_eq!(unsettled[0].owner, "instance-dead");
        heir.stored(answered);
        heir.resolve_unsettled(unanswered);
        assert!(heir.is_drained());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !left.iter().any(|name| name.starts_with("instance-dead")),
            "the drained orphan is deleted: {left:?}"
        );
    }

    #[test]
    fn journals_of_processes_that_stopped_clean_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        for n in 0..3 {
            let stopped = Journal::open(dir.path(), &format!("instance-{n}")).unwrap();
            let id = ConnectionId::new();
            stopped.intent(id, 1);
            stopped.answer(id, 1, &update("rt"));
            stopped.stored(id);
        }
        let _current = Journal::open(dir.path(), "instance-current").unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec!["instance-current.journal".to_owned()]);
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let id = ConnectionId::new();
        {
            let dead = Journal::open(dir.path(), "instance-torn").unwrap();
            dead.intent(id, 1);
        }
        let path = dir.path().join("instance-torn.journal");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"op\":\"answer\",\"id\":\"trunc");
        std::fs::write(&path, text).unwrap();
        let heir = Journal::open(dir.path(), "instance-heir").unwrap();
        assert!(heir.pending().is_empty());
        assert_eq!(
            heir.unsettled().len(),
            1,
            "the intent before the torn line counts"
        );
    }
}
