//! Idempotency keys: which `(scope, op_id)` was applied, with the outcome it produced.
//!
//! Rows go to `op_ids` in rowid (time) order, without an index: op ids are random, and a
//! b-tree keyed by them takes each insert on another page — with a unique index on
//! `op_ids`, that index was most of the pages every group commit wrote. Instead the writer
//! keeps the keys of the rows not yet indexed in memory (`pending`) and, once
//! [`MERGE_AT`] have gathered, inserts them into `op_index` in key order, [`MERGE_CHUNK`]
//! keys at a time between two groups: one pass over the index per batch instead of a page
//! per edit, in steps short enough not to stall the writer for long.
//!
//! `meta.op_index_upto` is a rowid up to which every `op_ids` row is in `op_index`; rows
//! after it are read back into memory when the store opens, so nothing is forgotten across
//! a restart or a crash (indexing a row twice is harmless).

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::db_err;
use crate::Result;

/// Pending keys that start a merge. Bounds the memory (about 100 bytes a key).
pub(crate) const MERGE_AT: usize = 8192;

/// Keys merged per step (one short transaction between two groups).
pub(crate) const MERGE_CHUNK: usize = 1024;

/// The writer's view of the op ids.
#[derive(Default)]
pub(crate) struct OpIndex {
    /// Keys of `op_ids` rows not in `op_index` yet, to their rowid.
    pending: HashMap<String, i64>,
    /// Keys added during the current group: forgotten again if the group rolls back (its
    /// rowids will be reused).
    added: Vec<String>,
    /// The merge under way: pending keys in key order, the next chunk last.
    merging: Vec<(String, i64)>,
    /// How many keys of `merging` the current step inserts (set by [`OpIndex::merge_step`]).
    step: usize,
}

/// One string for `(scope, op_id)`; the length prefix keeps any two pairs apart.
fn key(scope: &str, op_id: &str) -> String {
    format!("{}:{scope}{op_id}", scope.len())
}

/// The `(scope, op_id)` of a [`key`].
fn split_key(k: &str) -> Option<(&str, &str)> {
    let (len, rest) = k.split_once(':')?;
    let len: usize = len.parse().ok()?;
    (len <= rest.len() && rest.is_char_boundary(len)).then(|| rest.split_at(len))
}

impl OpIndex {
    /// Reads the keys not indexed yet.
    pub(crate) fn load(conn: &Connection) -> Result<OpIndex> {
        let upto: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'op_index_upto'",
                [],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        let mut st = conn
            .prepare("SELECT id, scope, op_id FROM op_ids WHERE id > ?1")
            .map_err(db_err)?;
        let rows = st
            .query_map([upto], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(db_err)?;
        let mut pending = HashMap::new();
        for row in rows {
            let (id, scope, op_id) = row.map_err(db_err)?;
            pending.insert(key(&scope, &op_id), id);
        }
        Ok(OpIndex {
            pending,
            ..Default::default()
        })
    }

    /// The stored outcome of `(scope, op_id)`, if it was applied.
    pub(crate) fn lookup(
        &self,
        conn: &Connection,
        scope: &str,
        op_id: &str,
    ) -> Result<Option<String>> {
        if let Some(&id) = self.pending.get(&key(scope, op_id)) {
            let row: Option<(String, String, String)> = conn
                .prepare_cached("SELECT scope, op_id, outcome FROM op_ids WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .map_err(db_err)?;
            // The row is checked against the key: a stale entry must never answer for
            // another op.
            if let Some((s, o, outcome)) = row
                && s == scope
                && o == op_id
            {
                return Ok(Some(outcome));
            }
        }
        conn.prepare_cached(
            "SELECT o.outcome FROM op_index i JOIN op_ids o ON o.id = i.id \
             WHERE i.scope = ?1 AND i.op_id = ?2",
        )
        .and_then(|mut s| s.query_row([scope, op_id], |r| r.get(0)).optional())
        .map_err(db_err)
    }

    /// Records an applied op (inside the group's transaction).
    pub(crate) fn insert(
        &mut self,
        conn: &Connection,
        scope: &str,
        op_id: &str,
        now: i64,
        outcome: &str,
    ) -> Result<()> {
        conn.prepare_cached(
            "INSERT INTO op_ids (scope, op_id, time_ms, outcome) VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut s| s.execute(params![scope, op_id, now, outcome]))
        .map_err(db_err)?;
        let k = key(scope, op_id);
        self.pending.insert(k.clone(), conn.last_insert_rowid());
        self.added.push(k);
        Ok(())
    }

    /// The group committed: its keys stay.
    pub(crate) fn group_committed(&mut self) {
        self.added.clear();
    }

    /// The group rolled back: its keys go.
    pub(crate) fn group_failed(&mut self) {
        for k in self.added.drain(..) {
            self.pending.remove(&k);
        }
    }

    /// Whether a merge step is due.
    pub(crate) fn should_merge(&self) -> bool {
        !self.merging.is_empty() || self.pending.len() >= MERGE_AT
    }

    /// Inserts the next chunk of keys into `op_index`, starting a merge (a snapshot of the
    /// pending keys, sorted) if none is under way. Runs between groups, inside a transaction
    /// of the caller's; call [`OpIndex::merge_committed`] once it has committed.
    pub(crate) fn merge_step(&mut self, conn: &Connection) -> Result<()> {
        if self.merging.is_empty() {
            self.merging = self
                .pending
                .iter()
                .map(|(k, &id)| (k.clone(), id))
                .collect();
            // Descending, so the chunk to insert next is at the end.
            self.merging.sort_unstable_by(|a, b| b.0.cmp(&a.0));
        }
        self.step = self.merging.len().min(MERGE_CHUNK);
        let chunk = &self.merging[self.merging.len() - self.step..];
        let mut insert = conn
            .prepare_cached(
                "INSERT OR REPLACE INTO op_index (scope, op_id, id) VALUES (?1, ?2, ?3)",
            )
            .map_err(db_err)?;
        for (k, id) in chunk.iter().rev() {
            if let Some((scope, op_id)) = split_key(k) {
                insert.execute(params![scope, op_id, id]).map_err(db_err)?;
            }
        }
        // Every row past the mark enters `pending` and leaves it only once indexed (or
        // rolled back, or expired): so all rows below the oldest still pending are indexed.
        let in_chunk: std::collections::HashSet<&str> =
            chunk.iter().map(|(k, _)| k.as_str()).collect();
        let oldest_left = self
            .pending
            .iter()
            .filter(|(k, _)| !in_chunk.contains(k.as_str()))
            .map(|(_, &id)| id)
            .min();
        // Nothing left pending: every row there is, is indexed.
        let upto = oldest_left.map(|id| id - 1);
        conn.prepare_cached(
            "UPDATE meta SET value = max(value, coalesce(?1, (SELECT max(id) FROM op_ids), 0)) \
             WHERE key = 'op_index_upto'",
        )
        .and_then(|mut s| s.execute([upto]))
        .map_err(db_err)?;
        Ok(())
    }

    /// The merge step committed: its keys are indexed.
    pub(crate) fn merge_committed(&mut self) {
        let at = self.merging.len() - self.step.min(self.merging.len());
        for (k, _) in self.merging.drain(at..) {
            self.pending.remove(&k);
        }
        self.step = 0;
    }

    /// The merge step failed: it will be retried.
    pub(crate) fn merge_failed(&mut self) {
        self.step = 0;
    }

    /// Deletes the ops older than `cutoff_ms` (a prefix of the rowids: rows are appended in
    /// time order), inside a transaction of the caller's; returns how many, and the first
    /// rowid kept, for [`OpIndex::expired`].
    pub(crate) fn expire(&self, conn: &Connection, cutoff_ms: i64) -> Result<(usize, i64)> {
        let cut: i64 = conn
            .prepare_cached(
                "SELECT coalesce((SELECT min(id) FROM op_ids WHERE time_ms >= ?1), \
                 (SELECT max(id) + 1 FROM op_ids), 0)",
            )
            .and_then(|mut s| s.query_row([cutoff_ms], |r| r.get(0)))
            .map_err(db_err)?;
        conn.prepare_cached(
            "DELETE FROM op_index WHERE id < ?1 \
             AND (scope, op_id) IN (SELECT scope, op_id FROM op_ids WHERE id < ?1)",
        )
        .and_then(|mut s| s.execute([cut]))
        .map_err(db_err)?;
        let n = conn
            .prepare_cached("DELETE FROM op_ids WHERE id < ?1")
            .and_then(|mut s| s.execute([cut]))
            .map_err(db_err)?;
        // An emptied table numbers its rows from 1 again: the mark must follow, or the new
        // rows would count as indexed.
        conn.prepare_cached(
            "UPDATE meta SET value = min(value, coalesce((SELECT max(id) FROM op_ids), 0)) \
             WHERE key = 'op_index_upto'",
        )
        .and_then(|mut s| s.execute([]))
        .map_err(db_err)?;
        Ok((n, cut))
    }

    /// The expiry committed: forget the keys of the rows it deleted.
    pub(crate) fn expired(&mut self, cut: i64) {
        self.pending.retain(|_, id| *id >= cut);
        self.merging.retain(|(_, id)| *id >= cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().expect("open");
        super::super::schema::migrate(&mut c).expect("schema");
        c
    }

    fn commit<T>(c: &Connection, f: impl FnOnce() -> T) -> T {
        c.execute_batch("BEGIN").expect("begin");
        let v = f();
        c.execute_batch("COMMIT").expect("commit");
        v
    }

    #[test]
    fn keys_split_back() {
        for (s, o) in [("u:alice", "op-1"), ("", "x"), ("c:1:2", ""), ("ü", "é:3")] {
            assert_eq!(split_key(&key(s, o)), Some((s, o)));
        }
        assert_ne!(key("ab", "c"), key("a", "bc"));
        assert_eq!(split_key("9:ab"), None);
        assert_eq!(split_key("x"), None);
    }

    #[test]
    fn lookups_merges_expiry_and_reload() {
        let c = db();
        let mut ops = OpIndex::load(&c).expect("load");
        let n = MERGE_AT + 10;
        commit(&c, || {
            for i in 0..n {
                ops.insert(&c, "u:a", &format!("op-{i}"), i as i64, &format!("[{i}]"))
                    .expect("insert");
            }
        });
        ops.group_committed();
        assert_eq!(
            ops.lookup(&c, "u:a", "op-5").expect("lookup").as_deref(),
            Some("[5]")
        );
        assert_eq!(ops.lookup(&c, "u:b", "op-5").expect("lookup"), None);

        // A rolled back group leaves nothing behind, and its reused rowids answer nothing.
        c.execute_batch("BEGIN").expect("begin");
        ops.insert(&c, "u:a", "doomed", 0, "[]").expect("insert");
        c.execute_batch("ROLLBACK").expect("rollback");
        ops.group_failed();
        assert_eq!(ops.lookup(&c, "u:a", "doomed").expect("lookup"), None);

        // Merge in steps; every key stays findable throughout, and after a reload.
        assert!(ops.should_merge());
        let mut steps = 0;
        while ops.should_merge() {
            commit(&c, || ops.merge_step(&c).expect("merge"));
            ops.merge_committed();
            steps += 1;
            assert_eq!(
                ops.lookup(&c, "u:a", "op-8000").expect("lookup").as_deref(),
                Some("[8000]")
            );
            let reloaded = OpIndex::load(&c).expect("reload");
            assert_eq!(
                reloaded
                    .lookup(&c, "u:a", "op-17")
                    .expect("lookup")
                    .as_deref(),
                Some("[17]")
            );
            assert_eq!(
                reloaded
                    .lookup(&c, "u:a", "op-8200")
                    .expect("lookup")
                    .as_deref(),
                Some("[8200]")
            );
        }
        assert_eq!(steps, n.div_ceil(MERGE_CHUNK));
        assert!(ops.pending.is_empty());
        assert!(
            OpIndex::load(&c).expect("reload").pending.is_empty(),
            "the mark covers every row"
        );

        // New rows after the merge are pending again; expiry removes old ones everywhere.
        commit(&c, || {
            ops.insert(&c, "u:a", "late", 1_000_000, "[late]")
                .expect("insert")
        });
        ops.group_committed();
        let (gone, cut) = commit(&c, || ops.expire(&c, 5000).expect("expire"));
        ops.expired(cut);
        assert_eq!(gone, 5000);
        assert_eq!(ops.lookup(&c, "u:a", "op-4999").expect("lookup"), None);
        assert_eq!(
            ops.lookup(&c, "u:a", "op-5000").expect("lookup").as_deref(),
            Some("[5000]")
        );
        assert_eq!(
            ops.lookup(&c, "u:a", "late").expect("lookup").as_deref(),
            Some("[late]")
        );
        let index_rows: i64 = c
            .query_row("SELECT count(*) FROM op_index", [], |r| r.get(0))
            .expect("count");
        assert_eq!(index_rows as usize, n - 5000);

        // Everything expires: rowids restart at 1, and the mark with them.
        let (_, cut) = commit(&c, || ops.expire(&c, i64::MAX).expect("expire"));
        ops.expired(cut);
        commit(&c, || {
            ops.insert(&c, "u:a", "fresh", 0, "[fresh]")
                .expect("insert")
        });
        ops.group_committed();
        let reloaded = OpIndex::load(&c).expect("reload");
        assert_eq!(
            reloaded
                .lookup(&c, "u:a", "fresh")
                .expect("lookup")
                .as_deref(),
            Some("[fresh]")
        );
        assert_eq!(reloaded.lookup(&c, "u:a", "op-6000").expect("lookup"), None);
    }
}
