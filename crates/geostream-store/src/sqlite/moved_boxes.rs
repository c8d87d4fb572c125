//! R-tree entries a group has moved, written once each just before the group's COMMIT.
//!
//! An R-tree update is a deletion and a reinsertion (each rewriting a leaf and its parents),
//! the writer's largest single cost in a replay of moving vessels (18 % of the server's CPU
//! time in the 10,000-viewport AIS replay). A feature that moves several times within one
//! group, as a vehicle reporting several times a second does, needs its entry written only
//! once, with the box it ends the group in. Nothing reads a layer's R-tree inside the
//! writer's transaction (queries run on reader connections, which see committed groups
//! only), so writing the entries at the end of the group is invisible to everyone.
//!
//! A request that runs in a savepoint and fails is rolled back, and so must be the entries it
//! moved: while a request runs, each change it makes is journalled with what it replaced,
//! and a rollback replays the journal backwards.

use std::collections::HashMap;

use geostream_core::feature::BBox;

/// A feature's R-tree entry: its layer's id and the feature's `ord`.
pub(crate) type EntryKey = (i64, i64);

/// An entry's grid box as the R-tree table holds it now (`table`) and as the group has left
/// it (`wanted`); `None`: no row.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Moved {
    table: Option<BBox>,
    wanted: Option<BBox>,
}

/// One statement the group's end must run on a layer's R-tree.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum EntryWrite {
    Insert(BBox),
    Update(BBox),
    Delete,
}

#[derive(Debug, Default)]
pub(crate) struct MovedBoxes {
    moved: HashMap<EntryKey, Moved>,
    /// While a request runs in a savepoint (`journaling`): each entry it changed, as it was
    /// before (`None`: absent), oldest first.
    journal: Vec<(EntryKey, Option<Moved>)>,
    journaling: bool,
}

impl MovedBoxes {
    /// The entry `key` moves from grid box `table` (what the R-tree holds unless the group
    /// has already moved it) to `wanted`.
    pub(crate) fn set(&mut self, key: EntryKey, table: Option<BBox>, wanted: Option<BBox>) {
        let before = self.moved.get(&key).copied();
        if before.is_none() && table == wanted {
            return;
        }
        if self.journaling {
            self.journal.push((key, before));
        }
        self.moved
            .entry(key)
            .and_modify(|m| m.wanted = wanted)
            .or_insert(Moved { table, wanted });
    }

    /// Forgets the entries of a layer whose R-tree is dropped.
    pub(crate) fn forget_layer(&mut self, layer: i64) {
        let keys: Vec<EntryKey> = self
            .moved
            .keys()
            .filter(|k| k.0 == layer)
            .copied()
            .collect();
        for key in keys {
            let before = self.moved.remove(&key);
            if self.journaling {
                self.journal.push((key, before));
            }
        }
    }

    /// A request that runs in a savepoint starts: its changes are journalled from here.
    pub(crate) fn begin_request(&mut self) {
        self.journal.clear();
        self.journaling = true;
    }

    /// The request's savepoint was released: its changes stay.
    pub(crate) fn keep_request(&mut self) {
        self.journal.clear();
        self.journaling = false;
    }

    /// The request was rolled back to its savepoint: so are its changes.
    pub(crate) fn undo_request(&mut self) {
        self.journaling = false;
        while let Some((key, before)) = self.journal.pop() {
            match before {
                Some(m) => {
                    self.moved.insert(key, m);
                }
                None => {
                    self.moved.remove(&key);
                }
            }
        }
    }

    /// Takes the statements the group's end must run, one per entry whose final box
    /// differs from the table's, and starts empty for the next group.
    pub(crate) fn take_writes(&mut self) -> impl Iterator<Item = (EntryKey, EntryWrite)> + '_ {
        self.keep_request();
        self.moved.drain().filter_map(|(key, m)| {
            let write = match (m.table, m.wanted) {
                (a, b) if a == b => return None,
                (None, Some(b)) => EntryWrite::Insert(b),
                (Some(_), Some(b)) => EntryWrite::Update(b),
                (Some(_), None) => EntryWrite::Delete,
                (None, None) => return None,
            };
            Some((key, write))
        })
    }

    /// Drops everything: the group was rolled back.
    pub(crate) fn clear(&mut self) {
        self.moved.clear();
        self.keep_request();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: BBox = [0.0, 0.0, 1.0, 1.0];
    const B: BBox = [2.0, 2.0, 3.0, 3.0];
    const C: BBox = [4.0, 4.0, 5.0, 5.0];

    fn writes(m: &mut MovedBoxes) -> Vec<(EntryKey, EntryWrite)> {
        let mut w: Vec<_> = m.take_writes().collect();
        w.sort_by_key(|(k, _)| *k);
        w
    }

    #[test]
    fn an_entry_moved_many_times_is_written_once_with_its_last_box() {
        let mut m = MovedBoxes::default();
        m.set((1, 7), Some(A), Some(B));
        m.set((1, 7), Some(B), Some(C));
        m.set((1, 8), None, Some(A));
        m.set((1, 9), Some(A), None);
        assert_eq!(
            writes(&mut m),
            vec![
                ((1, 7), EntryWrite::Update(C)),
                ((1, 8), EntryWrite::Insert(A)),
                ((1, 9), EntryWrite::Delete),
            ]
        );
        assert!(writes(&mut m).is_empty(), "the next group starts empty");
    }

    #[test]
    fn an_entry_that_ends_where_it_started_is_not_written() {
        let mut m = MovedBoxes::default();
        m.set((1, 7), Some(A), Some(B));
        m.set((1, 7), Some(B), Some(A));
        m.set((1, 8), Some(C), Some(C));
        // Created and deleted within the group.
        m.set((1, 9), None, Some(A));
        m.set((1, 9), Some(A), None);
        assert!(writes(&mut m).is_empty());
    }

    #[test]
    fn a_rolled_back_request_takes_its_moves_with_it() {
        let mut m = MovedBoxes::default();
        m.set((1, 7), Some(A), Some(B));
        m.begin_request();
        m.set((1, 7), Some(B), Some(C));
        m.set((1, 8), None, Some(A));
        m.set((1, 8), Some(A), Some(B));
        m.undo_request();
        m.begin_request();
        m.set((1, 9), Some(C), None);
        m.keep_request();
        m.begin_request();
        m.forget_layer(1);
        m.undo_request();
        assert_eq!(
            writes(&mut m),
            vec![
                ((1, 7), EntryWrite::Update(B)),
                ((1, 9), EntryWrite::Delete)
            ]
        );
    }

    #[test]
    fn a_dropped_layer_has_nothing_to_write() {
        let mut m = MovedBoxes::default();
        m.set((1, 7), Some(A), Some(B));
        m.set((2, 7), Some(A), Some(B));
        m.forget_layer(1);
        assert_eq!(writes(&mut m), vec![((2, 7), EntryWrite::Update(B))]);
    }
}
