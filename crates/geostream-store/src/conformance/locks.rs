//! Feature locks: taking, extending, releasing, expiry and what they refuse.

use super::*;

pub(super) async fn locks<S: Store>(s: Arc<S>) {
    new_layer(&*s, "k", false).await;
    ok(
        &*s,
        request(
            "k",
            vec![
                create("a", 0.0, 0.0, json!({})),
                create("b", 1.0, 1.0, json!({})),
            ],
            &alice(),
            None,
        ),
    )
    .await;
    let (a, b) = (
        vec!["a".to_string()],
        vec!["a".to_string(), "b".to_string()],
    );
    let before = now_ms();
    let locks = s.lock("k", &a, &alice(), 60_000).await.expect("lock");
    assert_eq!(locks.len(), 1);
    assert_eq!(
        (
            locks[0].layer.as_str(),
            locks[0].id.as_str(),
            &locks[0].holder
        ),
        ("k", "a", &alice())
    );
    assert!(
        locks[0].until_ms >= before + 60_000 && locks[0].until_ms <= now_ms() + 60_000,
        "until {}",
        locks[0].until_ms
    );
    assert_eq!(s.locks("k").await.expect("locks"), locks);

    // All or none: bob gets neither.
    match s.lock("k", &b, &bob(), 60_000).await {
        Err(StoreError::Locked {
            id,
            holder,
            until_ms,
        }) => assert_eq!(
            (id.as_str(), holder, until_ms),
            ("a", alice(), locks[0].until_ms)
        ),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert_eq!(
        s.locks("k").await.expect("locks").len(),
        1,
        "a refused lock request locks nothing"
    );
    // Others cannot edit; the holder can; unlocked features are free.
    match err(
        &*s,
        request(
            "k",
            vec![patch("a", json!({"x": 1}), Some(1))],
            &bob(),
            None,
        ),
    )
    .await
    {
        StoreError::Locked { id, holder, .. } => assert_eq!((id.as_str(), holder), ("a", alice())),
        e => panic!("expected Locked, got {e:?}"),
    }
    assert!(matches!(
        err(
            &*s,
            request(
                "k",
                vec![WriteOp::Delete {
                    id: "a".into(),
                    expected: Some(1)
                }],
                &bob(),
                None
            )
        )
        .await,
        StoreError::Locked { .. }
    ));
    // The same user on another client is another holder.
    assert!(matches!(
        err(
            &*s,
            request(
                "k",
                vec![patch("a", json!({}), Some(1))],
                &holder("c-alice-2", Some("alice")),
                None
            )
        )
        .await,
        StoreError::Locked { .. }
    ));
    one(
        &*s,
        request(
            "k",
            vec![patch("a", json!({"x": 1}), Some(1))],
            &alice(),
            None,
        ),
    )
    .await;
    one(
        &*s,
        request(
            "k",
            vec![patch("b", json!({"x": 1}), Some(1))],
            &bob(),
            None,
        ),
    )
    .await;
    // A batch touching a locked feature fails as a whole.
    let e = err(
        &*s,
        request(
            "k",
            vec![
                patch("b", json!({"y": 1}), Some(2)),
                patch("a", json!({"y": 1}), Some(2)),
            ],
            &bob(),
            None,
        ),
    )
    .await;
    assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
    assert_eq!(
        s.get("k", "b").await.expect("get").map(|f| f.version),
        Some(2)
    );

    // Locking again extends.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = s.lock("k", &a, &alice(), 120_000).await.expect("relock");
    assert!(again[0].until_ms > locks[0].until_ms, "relocking extends");
    // Only the holder unlocks.
    assert!(s.unlock("k", &a, &bob()).await.expect("unlock").is_empty());
    assert_eq!(s.locks("k").await.expect("locks").len(), 1);
    let released = s.unlock("k", &a, &alice()).await.expect("unlock");
    assert_eq!(
        released
            .iter()
            .map(|l| (l.id.as_str(), &l.holder))
            .collect::<Vec<_>>(),
        [("a", &alice())]
    );
    assert!(s.locks("k").await.expect("locks").is_empty());
    one(
        &*s,
        request(
            "k",
            vec![patch("a", json!({"z": 1}), Some(2))],
            &bob(),
            None,
        ),
    )
    .await;

    // Locks need existing features.
    assert_eq!(
        s.lock("k", &["a".to_string(), "nope".to_string()], &alice(), 1000)
            .await
            .unwrap_err(),
        StoreError::FeatureNotFound {
            layer: "k".into(),
            id: "nope".into()
        }
    );
    assert!(s.locks("k").await.expect("locks").is_empty());
}

pub(super) async fn lock_expiry<S: Store>(s: Arc<S>) {
    new_layer(&*s, "e", false).await;
    ok(
        &*s,
        request(
            "e",
            vec![
                create("a", 0.0, 0.0, json!({})),
                create("b", 1.0, 1.0, json!({})),
            ],
            &alice(),
            None,
        ),
    )
    .await;
    // Generous times: the machine running the suite may be busy compiling.
    s.lock("e", &["a".to_string()], &alice(), 1000)
        .await
        .expect("lock");
    assert!(matches!(
        err(
            &*s,
            request("e", vec![patch("a", json!({}), Some(1))], &bob(), None)
        )
        .await,
        StoreError::Locked { .. }
    ));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        s.locks("e").await.expect("locks").is_empty(),
        "expired locks are not live"
    );
    one(
        &*s,
        request(
            "e",
            vec![patch("a", json!({"x": 1}), Some(1))],
            &bob(),
            None,
        ),
    )
    .await;
    let reaped = s.reap_locks().await.expect("reap");
    assert_eq!(
        reaped
            .iter()
            .map(|l| (l.layer.as_str(), l.id.as_str(), &l.holder))
            .collect::<Vec<_>>(),
        [("e", "a", &alice())]
    );
    assert!(
        s.reap_locks().await.expect("reap").is_empty(),
        "a reaped lock is gone"
    );

    // A vanished client's locks shrink to the grace period, then get reaped.
    let long = s
        .lock("e", &["a".to_string(), "b".to_string()], &alice(), 600_000)
        .await
        .expect("lock");
    let bob_lock = s.lock("e", &[], &bob(), 1000).await.expect("empty lock");
    assert!(bob_lock.is_empty());
    let before = now_ms();
    let shortened = s
        .expire_client_locks("c-alice", 1000)
        .await
        .expect("expire");
    assert_eq!(shortened.len(), 2);
    for l in &shortened {
        assert_eq!(l.holder, alice());
        assert!(
            l.until_ms <= now_ms() + 1000
                && l.until_ms >= before + 1000
                && l.until_ms < long[0].until_ms,
            "until {}",
            l.until_ms
        );
    }
    assert!(
        s.expire_client_locks("c-nobody", 0)
            .await
            .expect("expire")
            .is_empty()
    );
    assert!(
        s.reap_locks().await.expect("reap").is_empty(),
        "not expired yet"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let reaped = s.reap_locks().await.expect("reap");
    let mut got: Vec<_> = reaped.iter().map(|l| l.id.as_str()).collect();
    got.sort();
    assert_eq!(got, ["a", "b"]);
    // An expired lock of someone else does not stand in the way of a new one.
    s.lock("e", &["a".to_string()], &alice(), 100)
        .await
        .expect("lock");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let taken = s
        .lock("e", &["a".to_string()], &bob(), 60_000)
        .await
        .expect("take over an expired lock");
    assert_eq!(taken[0].holder, bob());
}
