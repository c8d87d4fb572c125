//! Layers: create, list, describe, delete, and what a missing layer answers.

use super::*;

pub(super) async fn layers<S: Store>(s: Arc<S>) {
    let before = now_ms();
    let spec = LayerSpec {
        name: "roads".into(),
        title: Some("Roads".into()),
        description: Some("All roads".into()),
        last_writer_wins: false,
    };
    let info = s.create_layer(spec.clone()).await.expect("create_layer");
    assert_eq!(
        (
            info.name.as_str(),
            info.title.as_deref(),
            info.description.as_deref()
        ),
        ("roads", Some("Roads"), Some("All roads"))
    );
    assert!(!info.last_writer_wins);
    assert_eq!((info.seq, info.count, info.bbox), (0, 0, None));
    assert!(
        info.created_ms >= before.saturating_sub(1000) && info.created_ms <= now_ms() + 1000,
        "created_ms {}",
        info.created_ms
    );
    assert_eq!(
        s.create_layer(spec).await.unwrap_err(),
        StoreError::LayerExists("roads".into())
    );
    let bad = LayerSpec {
        name: "no spaces".into(),
        ..Default::default()
    };
    assert!(
        matches!(s.create_layer(bad).await, Err(StoreError::Invalid(_))),
        "invalid layer names are refused"
    );
    new_layer(&*s, "areas", true).await;

    let list = s.list_layers().await.expect("list_layers");
    assert_eq!(
        list.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["areas", "roads"],
        "layers by name"
    );
    assert!(list[0].last_writer_wins);
    assert_eq!(s.layer("roads").await.expect("layer"), info);

    ok(
        &*s,
        request(
            "roads",
            vec![
                create("a", 10.0, 20.0, json!({})),
                create("b", -5.5, 40.25, json!({})),
            ],
            &alice(),
            None,
        ),
    )
    .await;
    let info = s.layer("roads").await.expect("layer");
    assert_eq!((info.seq, info.count), (2, 2));
    let b = info.bbox.expect("a layer with geometries has an extent");
    let exact = [-5.5, 20.0, 10.0, 40.25];
    for k in 0..4 {
        assert!(
            (b[k] - exact[k]).abs() < 1e-3,
            "extent {b:?} is not about {exact:?}"
        );
    }
    assert!(
        b[0] <= -5.5 && b[1] <= 20.0 && b[2] >= 10.0 && b[3] >= 40.25,
        "extent {b:?} must cover every feature"
    );

    s.delete_layer("roads").await.expect("delete_layer");
    assert_eq!(
        s.layer("roads").await.unwrap_err(),
        StoreError::LayerNotFound("roads".into())
    );
    assert_eq!(
        s.delete_layer("roads").await.unwrap_err(),
        StoreError::LayerNotFound("roads".into())
    );
    assert_eq!(s.list_layers().await.expect("list").len(), 1);
}

pub(super) async fn missing_layer<S: Store>(s: Arc<S>) {
    let nf = StoreError::LayerNotFound("nope".into());
    assert_eq!(s.layer("nope").await.unwrap_err(), nf);
    assert_eq!(
        err(
            &*s,
            request(
                "nope",
                vec![create("a", 0.0, 0.0, json!({}))],
                &alice(),
                None
            )
        )
        .await,
        nf
    );
    assert_eq!(s.get("nope", "a").await.unwrap_err(), nf);
    assert_eq!(
        s.query(
            "nope",
            FeatureQuery {
                limit: 10,
                ..Default::default()
            }
        )
        .await
        .unwrap_err(),
        nf
    );
    assert_eq!(s.changes("nope", 0, 10).await.unwrap_err(), nf);
    assert_eq!(
        s.snapshot(
            "nope",
            SnapshotRequest {
                page_size: 10,
                ..Default::default()
            }
        )
        .await
        .unwrap_err(),
        nf
    );
    assert_eq!(
        s.lock("nope", &["a".into()], &alice(), 1000)
            .await
            .unwrap_err(),
        nf
    );
    assert_eq!(
        s.unlock("nope", &["a".into()], &alice()).await.unwrap_err(),
        nf
    );
    assert_eq!(s.locks("nope").await.unwrap_err(), nf);
}

pub(super) async fn delete_layer_removes_everything<S: Store>(s: Arc<S>) {
    new_layer(&*s, "gone", false).await;
    ok(
        &*s,
        request(
            "gone",
            vec![
                create("a", 1.0, 1.0, json!({})),
                create("b", 2.0, 2.0, json!({})),
            ],
            &alice(),
            Some("op-x"),
        ),
    )
    .await;
    s.lock("gone", &["a".to_string()], &alice(), 60_000)
        .await
        .expect("lock");
    s.delete_layer("gone").await.expect("delete");
    assert_eq!(
        s.get("gone", "a").await.unwrap_err(),
        StoreError::LayerNotFound("gone".into())
    );
    new_layer(&*s, "gone", false).await;
    let info = s.layer("gone").await.expect("layer");
    assert_eq!((info.seq, info.count, info.bbox), (0, 0, None));
    assert_eq!(s.get("gone", "a").await.expect("get"), None);
    assert!(all_features(&*s, "gone").await.is_empty());
    let q = FeatureQuery {
        bbox: Some([0.0, 0.0, 3.0, 3.0]),
        limit: 10,
        ..Default::default()
    };
    assert!(
        s.query("gone", q).await.expect("query").features.is_empty(),
        "nothing left in the spatial index"
    );
    let page = s.changes("gone", 0, 10).await.expect("changes");
    assert!(page.changes.is_empty() && page.seq == 0 && page.first_retained == 1);
    assert!(s.locks("gone").await.expect("locks").is_empty());
    assert!(
        s.reap_locks()
            .await
            .expect("reap")
            .iter()
            .all(|l| l.layer != "gone")
    );
    let c = one(
        &*s,
        request(
            "gone",
            vec![create("a", 1.0, 1.0, json!({}))],
            &alice(),
            None,
        ),
    )
    .await;
    assert_eq!(
        (c.seq, c.version),
        (1, 1),
        "a new layer of the same name starts afresh"
    );
}
