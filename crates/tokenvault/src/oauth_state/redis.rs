//! State in Redis: one key per flow, expired by Redis itself, taken with
//! `GETDEL` (Redis ≥ 6.2), which is atomic.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{StateError, StateKey, StateRecord, StateStore, ttl_millis};

/// Connection settings for [`RedisStateStore`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Prepended to every key; the default is `tokenvault:state:`.
    pub key_prefix: String,
    /// Bound on establishing a connection (each attempt, and the whole
    /// initial connect).
    pub connect_timeout: Duration,
    /// Bound on one command's reply.
    pub response_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            key_prefix: "tokenvault:state:".to_owned(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
        }
    }
}

/// The state store for multi-instance deployments with Redis
/// (`TOKENVAULT_REDIS_URL`). Cheap to clone; clones share one multiplexed,
/// self-reconnecting connection.
#[derive(Clone)]
pub struct RedisStateStore {
    connection: ConnectionManager,
    /// `host:port` (or socket path) for error messages; never the password.
    target: String,
    key_prefix: String,
    /// Upper bound on any one operation, reconnects included.
    operation_timeout: Duration,
}

impl std::fmt::Debug for RedisStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStateStore")
            .field("target", &self.target)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStateStore {
    /// Connects now: an unreachable server is [`StateError::Unavailable`]
    /// naming `host:port` within `options.connect_timeout`.
    pub async fn connect(url: &str, options: &RedisOptions) -> Result<Self, StateError> {
        let (client, target) = client(url)?;
        let config = manager_config(options);
        let connection = tokio::time::timeout(
            options.connect_timeout,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| {
            StateError::Unavailable(format!(
                "Redis at {target} did not accept a connection within {:?}",
                options.connect_timeout
            ))
        })?
        .map_err(|err| StateError::Unavailable(format!("Redis at {target}: {err}")))?;
        Ok(Self::with_connection(connection, target, options))
    }

    /// Returns at once and connects on first use, so a service can start
    /// while Redis is down and report it through [`StateStore::ping`].
    pub fn connect_lazy(url: &str, options: &RedisOptions) -> Result<Self, StateError> {
        let (client, target) = client(url)?;
        let connection =
            ConnectionManager::new_lazy_with_config(client, manager_config(options))
                .map_err(|err| StateError::Unavailable(format!("Redis at {target}: {err}")))?;
        Ok(Self::with_connection(connection, target, options))
    }

    fn with_connection(
        connection: ConnectionManager,
        target: String,
        options: &RedisOptions,
    ) -> Self {
        Self {
            connection,
            target,
            key_prefix: options.key_prefix.clone(),
            operation_timeout: options.connect_timeout + options.response_timeout,
        }
    }

    /// The Redis key holding `state`.
    pub fn redis_key(&self, state: &str) -> String {
        format!("{}{state}", self.key_prefix)
    }

    /// `host:port` of the server.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs one command, bounded by the operation timeout, mapping every
    /// failure to [`StateError::Unavailable`].
    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StateError> {
        let mut connection = self.connection.clone();
        bounded(&self.target, self.operation_timeout, async move {
            cmd.query_async::<T>(&mut connection).await
        })
        .await
    }
}

async fn bounded<T>(
    target: &str,
    limit: Duration,
    operation: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StateError> {
    match tokio::time::timeout(limit, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(StateError::Unavailable(format!("Redis at {target}: {err}"))),
        Err(_) => Err(StateError::Unavailable(format!(
            "Redis at {target} did not answer within {limit:?}"
        ))),
    }
}

fn client(url: &str) -> Result<(redis::Client, String), StateError> {
    // The error never echoes the URL, which may hold a password.
    let client = redis::Client::open(url).map_err(|err| {
        StateError::InvalidUrl(format!(
            "the Redis URL does not parse ({err}); use redis://[:PASSWORD@]HOST:PORT[/DB] or rediss://…"
        ))
    })?;
    let target = client.get_connection_info().addr().to_string();
    Ok((client, target))
}

fn manager_config(options: &RedisOptions) -> ConnectionManagerConfig {
    // Few, short reconnect attempts: a request waits seconds at most, then
    // gets `Unavailable`; the next request tries again.
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(options.response_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(250))
}

#[async_trait::async_trait]
impl StateStore for RedisStateStore {
    async fn put(
        &self,
        key: &StateKey,
        record: &StateRecord,
        ttl: Duration,
    ) -> Result<(), StateError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.redis_key(key.as_str()))
            .arg(record.to_json())
            .arg("PX")
            .arg(ttl_millis(ttl));
        self.run::<()>(cmd).await
    }

    async fn take(&self, key: &str) -> Result<Option<StateRecord>, StateError> {
        if !StateKey::is_well_formed(key) {
            return Ok(None);
        }
        let mut cmd = redis::cmd("GETDEL");
        cmd.arg(self.redis_key(key));
        self.run::<Option<String>>(cmd)
            .await?
            .map(|raw| StateRecord::from_json(&raw))
            .transpose()
    }

    async fn peek(&self, key: &str) -> Result<Option<StateRecord>, StateError> {
        if !StateKey::is_well_formed(key) {
            return Ok(None);
        }
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.redis_key(key));
        self.run::<Option<String>>(cmd)
            .await?
            .map(|raw| StateRecord::from_json(&raw))
            .transpose()
    }

    async fn purge_expired(&self) -> Result<u64, StateError> {
        Ok(0)
    }

    async fn ping(&self) -> Result<(), StateError> {
        let pong: String = self.run(redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StateError::Unavailable(format!(
                "Redis at {} answered PING with {pong:?}",
                self.target
            )))
        }
    }
}
