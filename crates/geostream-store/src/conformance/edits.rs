//! Single features: create, replace, patch, delete with versions, last-writer-wins layers, batches.

use super::*;

pub(super) async fn crud_with_versions<S: Store>(s: Arc<S>) {
    new_layer(&*s, "l", false).await;
    let w = alice();
    let c = one(
        &*s,
        request(
            "l",
            vec![create("a", 1.0, 2.0, json!({"name": "A", "n": 1}))],
            &w,
            Some("op-1"),
        ),
    )
    .await;
    assert_eq!(
        (c.seq, c.op, c.id.as_str(), c.version, c.layer.as_str()),
        (1, ChangeOp::Insert, "a", 1, "l")
    );
    assert!(c.old.is_none() && c.old_bbox.is_none());
    assert_eq!(c.new_bbox, Some([1.0, 2.0, 1.0, 2.0]));
    let mut changed = c.changed.clone();
    changed.sort();
    assert_eq!(changed, ["n", "name"], "an insert changes every property");
    assert!(c.geometry_changed);
    assert_eq!(
        (c.author.as_deref(), c.op_id.as_deref()),
        (Some("alice"), Some("op-1"))
    );
    assert!(c.time_ms > 0);
    let a1 = c.new.clone().expect("new");
    assert_eq!(
        (a1.version, a1.geometry.clone(), a1.properties.clone()),
        (
            1,
            Some(point(1.0, 2.0)),
            props(json!({"name": "A", "n": 1}))
        )
    );
    assert!(
        a1.updated.ends_with('Z') && a1.updated.len() == 24,
        "updated is RFC 3339 UTC with ms: {}",
        a1.updated
    );
    assert_eq!(s.get("l", "a").await.expect("get"), Some(a1.clone()));
    assert_eq!(s.get("l", "zz").await.expect("get"), None);

    // Server-chosen ids: distinct and non-empty.
    let x = one(
        &*s,
        request(
            "l",
            vec![WriteOp::Create {
                feature: feature(None, None, json!({})),
            }],
            &w,
            None,
        ),
    )
    .await;
    let y = one(
        &*s,
        request(
            "l",
            vec![WriteOp::Create {
                feature: feature(None, None, json!({})),
            }],
            &w,
            None,
        ),
    )
    .await;
    assert!(
        !x.id.is_empty() && x.id != y.id,
        "server ids {} {}",
        x.id,
        y.id
    );
    assert_eq!((x.seq, y.seq), (2, 3));
    assert!(
        !x.geometry_changed && x.new_bbox.is_none(),
        "no geometry, no box"
    );

    match err(
        &*s,
        request("l", vec![create("a", 0.0, 0.0, json!({}))], &w, None),
    )
    .await
    {
        StoreError::FeatureExists { layer, id, current } => assert_eq!(
            (layer.as_str(), id.as_str(), *current),
            ("l", "a", a1.clone())
        ),
        e => panic!("expected FeatureExists, got {e:?}"),
    }

    // Replace with the right version.
    let replace = |expected| WriteOp::Replace {
        id: "a".into(),
        feature: feature(None, Some(point(3.0, 4.0)), json!({"name": "A", "k": true})),
        expected,
    };
    let c = one(&*s, request("l", vec![replace(Some(1))], &w, None)).await;
    assert_eq!((c.seq, c.op, c.version), (4, ChangeOp::Update, 2));
    assert_eq!(c.old.as_ref(), Some(&a1));
    let mut changed = c.changed.clone();
    changed.sort();
    assert_eq!(
        changed,
        ["k", "n"],
        "replace lists added and removed properties, not unchanged ones"
    );
    assert!(c.geometry_changed);
    assert_eq!(
        (c.old_bbox, c.new_bbox),
        (Some([1.0, 2.0, 1.0, 2.0]), Some([3.0, 4.0, 3.0, 4.0]))
    );
    let a2 = c.new.clone().expect("new");
    assert_eq!(a2.version, 2);

    // Stale versions conflict and return the current feature; no version: refused here.
    match err(&*s, request("l", vec![replace(Some(1))], &w, None)).await {
        StoreError::Conflict {
            id,
            expected,
            current,
        } => assert_eq!(
            (id.as_str(), expected, current.map(|b| *b)),
            ("a", 1, Some(a2.clone()))
        ),
        e => panic!("expected Conflict, got {e:?}"),
    }
    assert_eq!(
        err(&*s, request("l", vec![replace(None)], &w, None)).await,
        StoreError::VersionRequired { layer: "l".into() }
    );
    assert_eq!(
        err(
            &*s,
            request("l", vec![patch("a", json!({"q": 1}), None)], &w, None)
        )
        .await,
        StoreError::VersionRequired { layer: "l".into() }
    );
    assert_eq!(
        err(
            &*s,
            request(
                "l",
                vec![WriteOp::Delete {
                    id: "a".into(),
                    expected: None
                }],
                &w,
                None
            )
        )
        .await,
        StoreError::VersionRequired { layer: "l".into() }
    );
    // Missing features with a version: a conflict with nothing current.
    for op in [
        patch("zz", json!({}), Some(1)),
        WriteOp::Delete {
            id: "zz".into(),
            expected: Some(3),
        },
    ] {
        match err(&*s, request("l", vec![op], &w, None)).await {
            StoreError::Conflict {
                id, current: None, ..
            } => assert_eq!(id, "zz"),
            e => panic!("expected Conflict without current, got {e:?}"),
        }
    }
    assert_eq!(
        s.get("l", "a").await.expect("get"),
        Some(a2.clone()),
        "failed edits change nothing"
    );
    assert_eq!(
        s.layer("l").await.expect("layer").seq,
        4,
        "failed edits consume no sequence number"
    );

    // Delete: the change carries the old feature and version + 1.
    let c = one(
        &*s,
        request(
            "l",
            vec![WriteOp::Delete {
                id: "a".into(),
                expected: Some(2),
            }],
            &w,
            None,
        ),
    )
    .await;
    assert_eq!((c.seq, c.op, c.version), (5, ChangeOp::Delete, 3));
    assert_eq!((c.old.as_ref(), c.new.as_ref()), (Some(&a2), None));
    assert_eq!((c.old_bbox, c.new_bbox), (Some([3.0, 4.0, 3.0, 4.0]), None));
    let mut changed = c.changed.clone();
    changed.sort();
    assert_eq!(changed, ["k", "name"], "a delete changes every property");
    assert!(c.geometry_changed);
    assert_eq!(s.get("l", "a").await.expect("get"), None);
    match err(
        &*s,
        request(
            "l",
            vec![WriteOp::Delete {
                id: "a".into(),
                expected: Some(2),
            }],
            &w,
            None,
        ),
    )
    .await
    {
        StoreError::Conflict {
            current: None,
            expected: 2,
            ..
        } => {}
        e => panic!("expected Conflict without current, got {e:?}"),
    }
    let info = s.layer("l").await.expect("layer");
    assert_eq!((info.seq, info.count), (5, 2));
    check_log(&all_changes(&*s, "l").await, 1);
}

pub(super) async fn last_writer_wins<S: Store>(s: Arc<S>) {
    new_layer(&*s, "lww", true).await;
    let w = bob();
    let replace = |id: &str, n: i64, expected| WriteOp::Replace {
        id: id.into(),
        feature: feature(None, Some(point(0.0, 0.0)), json!({"n": n})),
        expected,
    };
    let c = one(&*s, request("lww", vec![replace("a", 1, None)], &w, None)).await;
    assert_eq!(
        (c.op, c.version),
        (ChangeOp::Insert, 1),
        "replace without a version creates a missing feature"
    );
    let c = one(&*s, request("lww", vec![replace("a", 2, None)], &w, None)).await;
    assert_eq!(
        (c.op, c.version, c.changed.clone(), c.geometry_changed),
        (ChangeOp::Update, 2, vec!["n".to_string()], false)
    );
    let c = one(
        &*s,
        request("lww", vec![patch("a", json!({"m": 1}), None)], &w, None),
    )
    .await;
    assert_eq!(c.version, 3);
    assert!(
        matches!(
            err(
                &*s,
                request("lww", vec![replace("a", 9, Some(1))], &w, None)
            )
            .await,
            StoreError::Conflict { expected: 1, .. }
        ),
        "a stated version is still checked"
    );
    assert!(matches!(
        err(
            &*s,
            request("lww", vec![replace("b", 9, Some(1))], &w, None)
        )
        .await,
        StoreError::Conflict { current: None, .. }
    ));
    assert_eq!(
        err(
            &*s,
            request("lww", vec![patch("b", json!({}), None)], &w, None)
        )
        .await,
        StoreError::FeatureNotFound {
            layer: "lww".into(),
            id: "b".into()
        },
        "patch does not create"
    );
    assert!(matches!(
        err(
            &*s,
            request("lww", vec![create("a", 0.0, 0.0, json!({}))], &w, None)
        )
        .await,
        StoreError::FeatureExists { .. }
    ));
    let c = one(
        &*s,
        request(
            "lww",
            vec![WriteOp::Delete {
                id: "a".into(),
                expected: None,
            }],
            &w,
            None,
        ),
    )
    .await;
    assert_eq!((c.op, c.version), (ChangeOp::Delete, 4));
    assert_eq!(
        err(
            &*s,
            request(
                "lww",
                vec![WriteOp::Delete {
                    id: "a".into(),
                    expected: None
                }],
                &w,
                None
            )
        )
        .await,
        StoreError::FeatureNotFound {
            layer: "lww".into(),
            id: "a".into()
        }
    );
    check_log(&all_changes(&*s, "lww").await, 1);
}

pub(super) async fn patch_semantics<S: Store>(s: Arc<S>) {
    new_layer(&*s, "p", false).await;
    let w = alice();
    one(
        &*s,
        request(
            "p",
            vec![create(
                "a",
                1.0,
                1.0,
                json!({"a": 1, "b": {"c": 1, "d": 2}, "e": "x"}),
            )],
            &w,
            None,
        ),
    )
    .await;
    // RFC 7396: null removes, objects merge, the rest replaces; unchanged values are not listed.
    let c = one(
        &*s,
        request(
            "p",
            vec![patch(
                "a",
                json!({"a": null, "b": {"d": null, "f": 3}, "e": "x", "g": [1]}),
                Some(1),
            )],
            &w,
            None,
        ),
    )
    .await;
    assert_eq!(
        c.new.as_ref().map(|f| f.properties.clone()),
        Some(props(json!({"b": {"c": 1, "f": 3}, "e": "x", "g": [1]})))
    );
    let mut changed = c.changed.clone();
    changed.sort();
    assert_eq!(changed, ["a", "b", "g"]);
    assert!(!c.geometry_changed);
    assert_eq!(
        (c.old_bbox, c.new_bbox),
        (Some([1.0, 1.0, 1.0, 1.0]), Some([1.0, 1.0, 1.0, 1.0]))
    );
    // Geometry only.
    let c = one(
        &*s,
        request("p", vec![move_to("a", 5.0, -5.0, Some(2))], &w, None),
    )
    .await;
    assert!(c.geometry_changed && c.changed.is_empty());
    assert_eq!(c.new_bbox, Some([5.0, -5.0, 5.0, -5.0]));
    // Removing the geometry.
    let op = WriteOp::Patch {
        id: "a".into(),
        properties: None,
        geometry: Some(None),
        expected: Some(3),
    };
    let c = one(&*s, request("p", vec![op], &w, None)).await;
    assert!(c.geometry_changed);
    assert_eq!(
        (c.new.as_ref().and_then(|f| f.geometry.clone()), c.new_bbox),
        (None, None)
    );
    let got = s.get("p", "a").await.expect("get").expect("a");
    assert_eq!((got.version, got.geometry), (4, None));
    // A geometry-less feature leaves bbox queries but stays in unbounded ones.
    let q = FeatureQuery {
        bbox: Some([-180.0, -90.0, 180.0, 90.0]),
        limit: 10,
        ..Default::default()
    };
    assert!(s.query("p", q).await.expect("query").features.is_empty());
    assert_eq!(all_features(&*s, "p").await.len(), 1);
    // Put a geometry back.
    let c = one(
        &*s,
        request("p", vec![move_to("a", 7.0, 8.0, Some(4))], &w, None),
    )
    .await;
    assert_eq!((c.old_bbox, c.new_bbox), (None, Some([7.0, 8.0, 7.0, 8.0])));
    let q = FeatureQuery {
        bbox: Some([6.5, 7.5, 7.5, 8.5]),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(ids(&s.query("p", q).await.expect("query").features), ["a"]);
}

pub(super) async fn batches_are_atomic<S: Store>(s: Arc<S>) {
    new_layer(&*s, "b", false).await;
    let w = alice();
    let o = ok(
        &*s,
        request(
            "b",
            vec![
                create("a", 0.0, 0.0, json!({})),
                create("b", 1.0, 1.0, json!({})),
                patch("a", json!({"x": 1}), Some(1)),
            ],
            &w,
            None,
        ),
    )
    .await;
    assert_eq!(
        o.changes
            .iter()
            .map(|c| (c.seq, c.version))
            .collect::<Vec<_>>(),
        [(1, 1), (2, 1), (3, 2)],
        "ops apply in order and see each other"
    );
    assert!(!o.replayed);
    // A failing op rolls back the ops before it and consumes no sequence number.
    let e = err(
        &*s,
        request(
            "b",
            vec![
                create("c", 0.0, 0.0, json!({})),
                patch("a", json!({"y": 1}), Some(2)),
                patch("b", json!({}), Some(99)),
            ],
            &w,
            None,
        ),
    )
    .await;
    assert!(
        matches!(e, StoreError::Conflict { expected: 99, .. }),
        "{e:?}"
    );
    assert_eq!(s.get("b", "c").await.expect("get"), None);
    assert_eq!(
        s.get("b", "a").await.expect("get").map(|f| f.version),
        Some(2)
    );
    let e = err(
        &*s,
        request(
            "b",
            vec![
                create("d", 0.0, 0.0, json!({})),
                create("d", 0.0, 0.0, json!({})),
            ],
            &w,
            None,
        ),
    )
    .await;
    assert!(matches!(e, StoreError::FeatureExists { .. }), "{e:?}");
    assert_eq!(s.get("b", "d").await.expect("get"), None);
    let info = s.layer("b").await.expect("layer");
    assert_eq!((info.seq, info.count), (3, 2));
    let c = one(
        &*s,
        request("b", vec![create("e", 0.0, 0.0, json!({}))], &w, None),
    )
    .await;
    assert_eq!(c.seq, 4, "the next accepted change follows without a gap");
    // The rolled back patch of `a` left no trace, not even in a cache: the edit based on
    // the version before it goes through, from the state before it.
    let c = one(
        &*s,
        request("b", vec![patch("a", json!({"z": 1}), Some(2))], &w, None),
    )
    .await;
    assert_eq!(c.version, 3);
    assert_eq!(
        c.new.map(|f| f.properties),
        Some(props(json!({"x": 1, "z": 1})))
    );
    check_log(&all_changes(&*s, "b").await, 1);
}
