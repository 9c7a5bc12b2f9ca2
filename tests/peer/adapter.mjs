// Unbounded in-memory storage adapter for oidc-provider.
//
// oidc-provider's bundled MemoryAdapter keeps everything in an LRU capped at
// 1000 entries. A load test that drives hundreds of token requests through the
// peer could silently evict live grants/refresh tokens and turn a correct
// client into a "failing" one, so the peer uses this small adapter instead.
// It implements the documented adapter interface (upsert/find/findByUid/
// findByUserCode/consume/destroy/revokeByGrantId) over one shared Map.
//
// Everything lives in a single process-wide Store so that the test hooks can
// enumerate grants (POST /__test/revoke-grants) and register clients.

export class Store {
  constructor() {
    /** key `${model}:${id}` -> { payload, expiresAt (ms epoch | Infinity) } */
    this.entries = new Map();
    /** grantId -> Set of entry keys belonging to that grant */
    this.grants = new Map();
    /** Session uid -> Session id */
    this.uids = new Map();
    /** normalized user code -> DeviceCode id */
    this.userCodes = new Map();

    // Lazy expiry happens on read; this sweep just bounds memory for long runs.
    this.sweeper = setInterval(() => this.sweep(), 60_000);
    this.sweeper.unref();
  }

  get(key) {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) {
      this.remove(key);
      return undefined;
    }
    return entry.payload;
  }

  set(key, payload, expiresIn) {
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : Infinity;
    this.entries.set(key, { payload, expiresAt });
  }

  remove(key) {
    const entry = this.entries.get(key);
    this.entries.delete(key);
    if (!entry) return;
    const { payload } = entry;
    if (payload.grantId) this.grants.get(payload.grantId)?.delete(key);
    if (payload.uid && this.uids.get(payload.uid) === key) this.uids.delete(payload.uid);
    if (payload.userCode && this.userCodes.get(payload.userCode) === key) {
      this.userCodes.delete(payload.userCode);
    }
  }

  sweep() {
    const now = Date.now();
    for (const [key, { expiresAt }] of this.entries) {
      if (expiresAt <= now) this.remove(key);
    }
  }

  /** Payloads of every live entry of one model, e.g. all('Grant'). */
  all(model) {
    const prefix = `${model}:`;
    const out = [];
    for (const key of [...this.entries.keys()]) {
      if (!key.startsWith(prefix)) continue;
      const payload = this.get(key);
      if (payload) out.push({ id: key.slice(prefix.length), payload: structuredClone(payload) });
    }
    return out;
  }

  /** Delete every artifact (tokens, codes) issued under a grant, and the grant itself. */
  revokeGrant(grantId) {
    for (const key of this.grants.get(grantId) ?? []) this.remove(key);
    this.grants.delete(grantId);
    this.remove(`Grant:${grantId}`);
  }
}

/** Returns the `adapter` factory to pass in the oidc-provider configuration. */
export function adapterFactory(store) {
  return class StoreAdapter {
    constructor(model) {
      this.model = model;
    }

    key(id) {
      return `${this.model}:${id}`;
    }

    async upsert(id, payload, expiresIn) {
      const key = this.key(id);
      store.remove(key); // drop stale secondary indexes of a previous version
      // Stored as a private copy: oidc-provider must only see changes made through the adapter.
      store.set(key, structuredClone(payload), expiresIn);
      if (payload.grantId) {
        if (!store.grants.has(payload.grantId)) store.grants.set(payload.grantId, new Set());
        store.grants.get(payload.grantId).add(key);
      }
      if (this.model === 'Session' && payload.uid) store.uids.set(payload.uid, key);
      if (payload.userCode) store.userCodes.set(payload.userCode, key);
    }

    async find(id) {
      const payload = store.get(this.key(id));
      return payload && structuredClone(payload);
    }

    async findByUid(uid) {
      const key = store.uids.get(uid);
      const payload = key && store.get(key);
      return payload ? structuredClone(payload) : undefined;
    }

    async findByUserCode(userCode) {
      const key = store.userCodes.get(userCode);
      const payload = key && store.get(key);
      return payload ? structuredClone(payload) : undefined;
    }

    async consume(id) {
      const payload = store.get(this.key(id));
      if (payload) payload.consumed = Math.floor(Date.now() / 1000);
    }

    async destroy(id) {
      store.remove(this.key(id));
    }

    // oidc-provider calls this once per token model when it revokes a grant.
    // Tokens of all models share the grant index, so revoking only this
    // model's members keeps the semantics exact.
    async revokeByGrantId(grantId) {
      const prefix = `${this.model}:`;
      for (const key of [...(store.grants.get(grantId) ?? [])]) {
        if (key.startsWith(prefix)) store.remove(key);
      }
    }
  };
}
