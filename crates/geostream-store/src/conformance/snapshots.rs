//! Changes and snapshots: consistent cuts, races with writes, the change log and its pruning.

use super::queries::cql;
use super::*;

async fn collect_pages(
    mut pages: tokio::sync::mpsc::Receiver<Result<Vec<Feature>, StoreError>>,
) -> Vec<Feature> {
    let mut out = Vec::new();
    while let Some(p) = pages.recv().await {
        out.extend(p.expect("page"));
    }
    out
}

pub(super) async fn snapshot_basics<S: Store>(s: Arc<S>) {
    new_layer(&*s, "s", true).await;
    let ops = (0..20)
        .map(|i| create(&format!("f{i:02}"), f64::from(i), 0.0, json!({"i": i})))
        .collect();
    ok(&*s, request("s", ops, &alice(), None)).await;
    let snap = s
        .snapshot(
            "s",
            SnapshotRequest {
                page_size: 3,
                ..Default::default()
            },
        )
        .await
        .expect("snapshot");
    assert_eq!((snap.seq, snap.complete, snap.changes.len()), (20, true, 0));
    assert_eq!(
        collect_pages(snap.pages).await,
        all_features(&*s, "s").await
    );
    for i in 0..5 {
        one(
            &*s,
            request(
                "s",
                vec![move_to(&format!("f{i:02}"), 50.0, 50.0, None)],
                &alice(),
                None,
            ),
        )
        .await;
    }
    one(
        &*s,
        request(
            "s",
            vec![WriteOp::Delete {
                id: "f19".into(),
                expected: None,
            }],
            &alice(),
            None,
        ),
    )
    .await;
    let snap = s
        .snapshot(
            "s",
            SnapshotRequest {
                since: Some(20),
                page_size: 7,
                ..Default::default()
            },
        )
        .await
        .expect("snapshot");
    assert_eq!((snap.seq, snap.complete), (26, true));
    assert_eq!(
        snap.changes,
        s.changes("s", 20, 100).await.expect("changes").changes,
        "the changes after since"
    );
    assert_eq!(
        snap.changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        (21..=26).collect::<Vec<_>>()
    );
    let features = collect_pages(snap.pages).await;
    assert_eq!(features.len(), 19);
    let snap = s
        .snapshot(
            "s",
            SnapshotRequest {
                since: Some(26),
                page_size: 7,
                ..Default::default()
            },
        )
        .await
        .expect("snapshot");
    assert!(snap.complete && snap.changes.is_empty());
    // Box and filter apply to the snapshot's features.
    let req = SnapshotRequest {
        bbox: Some([45.0, 45.0, 55.0, 55.0]),
        filter: Some(Arc::new(cql("i >= 2"))),
        since: Some(24),
        page_size: 2,
    };
    let snap = s.snapshot("s", req).await.expect("snapshot");
    assert_eq!(snap.changes.len(), 2);
    assert_eq!(ids(&collect_pages(snap.pages).await), ["f02", "f03", "f04"]);
    // changes(): limit and the retained range.
    let page = s.changes("s", 3, 4).await.expect("changes");
    assert_eq!((page.seq, page.first_retained), (26, 1));
    assert_eq!(
        page.changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );
    assert!(
        s.changes("s", 26, 10)
            .await
            .expect("changes")
            .changes
            .is_empty()
    );
}

pub(super) async fn snapshot_races_writes<S: Store>(s: Arc<S>) {
    new_layer(&*s, "r", true).await;
    let ops = (0..30)
        .map(|i| {
            create(
                &format!("f{i:02}"),
                f64::from(i),
                f64::from(i % 7),
                json!({"i": i}),
            )
        })
        .collect();
    ok(&*s, request("r", ops, &alice(), None)).await;
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for k in 0..300u32 {
                let id = format!("f{:02}", (k * 7) % 30);
                let op = match k % 10 {
                    3 => move_to(&id, f64::from(k % 90), f64::from(k % 45), None),
                    7 => WriteOp::Delete {
                        id: id.clone(),
                        expected: None,
                    },
                    8 => WriteOp::Replace {
                        id: id.clone(),
                        feature: feature(None, Some(point(1.5, 2.5)), json!({"i": k})),
                        expected: None,
                    },
                    _ => patch(&id, json!({"k": k}), None),
                };
                match s.apply(request("r", vec![op], &bob(), None)).await {
                    Ok(_) | Err(StoreError::FeatureNotFound { .. }) => {}
                    Err(e) => panic!("racing writer: {e}"),
                }
                if k % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut snaps = Vec::new();
    while !writer.is_finished() {
        let snap = s
            .snapshot(
                "r",
                SnapshotRequest {
                    since: Some(30),
                    page_size: 4,
                    ..Default::default()
                },
            )
            .await
            .expect("snapshot");
        let (seq, changes, complete) = (snap.seq, snap.changes, snap.complete);
        let features = collect_pages(snap.pages).await;
        snaps.push((seq, changes, complete, features));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    writer.await.expect("writer");
    assert!(
        snaps.len() >= 2,
        "the case needs snapshots taken during the writes"
    );
    let log = all_changes(&*s, "r").await;
    check_log(&log, 1);
    let last = log.len() as u64;
    assert!(
        snaps.iter().any(|(seq, ..)| *seq > 30 && *seq < last),
        "no snapshot fell in the middle of the writes (at {:?})",
        snaps.iter().map(|(seq, ..)| *seq).collect::<Vec<_>>()
    );
    let fin = by_id(all_features(&*s, "r").await);
    for (seq, changes, complete, features) in snaps {
        assert!(complete && seq >= 30);
        // The snapshot's changes are exactly the log's (30, seq].
        assert_eq!(
            changes.as_slice(),
            &log[30..seq as usize],
            "snapshot at {seq}: its changes"
        );
        // Its features are the log replayed up to seq: every change up to the cut is in
        // them, none after.
        let mut at_cut = BTreeMap::new();
        replay(&mut at_cut, &log[..seq as usize]);
        assert_eq!(
            by_id(features.clone()),
            at_cut,
            "snapshot at {seq}: features as of seq"
        );
        // And the later changes take them to the final state.
        let mut later = by_id(features);
        replay(&mut later, &log[seq as usize..]);
        assert_eq!(later, fin, "snapshot at {seq} + later changes = now");
    }
}

pub(super) async fn pruning<S: Store>(s: Arc<S>) {
    new_layer(&*s, "big", true).await;
    one(
        &*s,
        request(
            "big",
            vec![create("a", 0.0, 0.0, json!({"n": 0}))],
            &alice(),
            None,
        ),
    )
    .await;
    const CAP: u64 = 300_000;
    let mut written = 1u64;
    let mut page = s.changes("big", 0, 1).await.expect("changes");
    while page.first_retained <= 1 && written < CAP {
        let ops = (0..500)
            .map(|k| patch("a", json!({"n": written + k}), None))
            .collect();
        ok(&*s, request("big", ops, &alice(), None)).await;
        written += 500;
        page = s.changes("big", 0, 1).await.expect("changes");
    }
    if page.first_retained <= 1 {
        eprintln!(
            "skipping pruning checks: the store kept all {written} changes (configure a small retention)"
        );
        return;
    }
    let seq = page.seq;
    assert_eq!(seq, written);
    assert!(page.first_retained > 1 && page.first_retained <= seq);
    assert_eq!(
        page.changes.first().map(|c| c.seq),
        Some(page.first_retained),
        "changes resume at the oldest retained"
    );
    let snap = s
        .snapshot(
            "big",
            SnapshotRequest {
                since: Some(0),
                page_size: 10,
                ..Default::default()
            },
        )
        .await
        .expect("snapshot");
    assert!(
        !snap.complete,
        "changes after since were pruned: the caller must resync"
    );
    assert_eq!(snap.seq, seq);
    let features = collect_pages(snap.pages).await;
    assert_eq!(features.len(), 1);
    assert_eq!(
        features[0].version, seq,
        "the resync snapshot has the current features"
    );
    let snap = s
        .snapshot(
            "big",
            SnapshotRequest {
                since: Some(seq - 1),
                page_size: 10,
                ..Default::default()
            },
        )
        .await
        .expect("snapshot");
    assert!(snap.complete);
    assert_eq!(
        snap.changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [seq]
    );
    let first = page.first_retained;
    let snap = s
        .snapshot(
            "big",
            SnapshotRequest {
                since: Some(first - 1),
                page_size: 10,
                ..Default::default()
            },
        )
        .await
        .expect("snapshot");
    if snap.complete {
        assert_eq!(snap.changes.first().map(|c| c.seq), Some(first));
        check_log(&snap.changes, first);
    }
}
