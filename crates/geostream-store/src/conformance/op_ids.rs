//! Idempotency: an op id applied once, replayed with its first outcome, also when raced.

use super::*;

pub(super) async fn idempotent_op_ids<S: Store>(s: Arc<S>) {
    new_layer(&*s, "i", false).await;
    let w = alice();
    let first = ok(
        &*s,
        request(
            "i",
            vec![
                create("a", 0.0, 0.0, json!({"v": 1})),
                WriteOp::Create {
                    feature: feature(None, None, json!({})),
                },
            ],
            &w,
            Some("op-1"),
        ),
    )
    .await;
    assert!(!first.replayed);
    // The same op id again (even with other content) returns the original outcome.
    let again = ok(
        &*s,
        request(
            "i",
            vec![
                create("a", 0.0, 0.0, json!({"v": 1})),
                WriteOp::Create {
                    feature: feature(None, None, json!({})),
                },
            ],
            &w,
            Some("op-1"),
        ),
    )
    .await;
    assert!(again.replayed);
    assert_eq!(again.changes, first.changes);
    let other_content = ok(
        &*s,
        request(
            "i",
            vec![create("zzz", 0.0, 0.0, json!({}))],
            &w,
            Some("op-1"),
        ),
    )
    .await;
    assert!(other_content.replayed && other_content.changes == first.changes);
    assert_eq!(s.get("i", "zzz").await.expect("get"), None);
    let info = s.layer("i").await.expect("layer");
    assert_eq!((info.seq, info.count), (2, 2), "a repeat applies nothing");
    // The scope is the user when there is one: the same user on another client is a repeat...
    let other_client = holder("c-alice-2", Some("alice"));
    assert!(
        ok(
            &*s,
            request(
                "i",
                vec![create("q", 0.0, 0.0, json!({}))],
                &other_client,
                Some("op-1")
            )
        )
        .await
        .replayed
    );
    // ...another writer with the same op id is not.
    let c = one(
        &*s,
        request(
            "i",
            vec![create("b", 0.0, 0.0, json!({}))],
            &bob(),
            Some("op-1"),
        ),
    )
    .await;
    assert_eq!(c.seq, 3);
    // Without a user, the client is the scope.
    let anon = holder("device-7", None);
    one(
        &*s,
        request(
            "i",
            vec![create("c", 0.0, 0.0, json!({}))],
            &anon,
            Some("op-2"),
        ),
    )
    .await;
    assert!(
        ok(
            &*s,
            request(
                "i",
                vec![create("c", 0.0, 0.0, json!({}))],
                &anon,
                Some("op-2")
            )
        )
        .await
        .replayed
    );
    // A failed request records nothing: its retry runs (and fails) again.
    for _ in 0..2 {
        let e = err(
            &*s,
            request("i", vec![patch("a", json!({}), Some(7))], &w, Some("op-3")),
        )
        .await;
        assert!(matches!(e, StoreError::Conflict { .. }), "{e:?}");
    }
    let c = one(
        &*s,
        request(
            "i",
            vec![patch("a", json!({"v": 2}), Some(1))],
            &w,
            Some("op-3"),
        ),
    )
    .await;
    assert_eq!(c.version, 2);
    check_log(&all_changes(&*s, "i").await, 1);
}

pub(super) async fn concurrent_op_ids<S: Store>(s: Arc<S>) {
    new_layer(&*s, "ci", false).await;
    for round in 0..5 {
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let op = WriteOp::Create {
                    feature: feature(None, Some(point(1.0, 1.0)), json!({"round": round})),
                };
                s.apply(request(
                    "ci",
                    vec![op],
                    &alice(),
                    Some(&format!("same-{round}")),
                ))
                .await
                .expect("apply")
            }));
        }
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.expect("task"));
        }
        assert_eq!(
            outcomes.iter().filter(|o| !o.replayed).count(),
            1,
            "exactly one of the concurrent repeats applies"
        );
        assert!(
            outcomes.iter().all(|o| o.changes == outcomes[0].changes),
            "every repeat gets the same answer"
        );
        assert_eq!(s.layer("ci").await.expect("layer").seq, round + 1);
    }
    assert_eq!(s.layer("ci").await.expect("layer").count, 5);
}

/// One operation id sent at once to two layers (a client retrying on another layer by
/// mistake, or two nodes each taking a copy): the writes of different layers do not wait for
/// each other, yet exactly one of them applies and every other gets its recorded answer.
pub(super) async fn op_ids_raced_across_layers<S: Store>(s: Arc<S>) {
    new_layer(&*s, "race-a", false).await;
    new_layer(&*s, "race-b", false).await;
    for round in 0..10 {
        let mut tasks = Vec::new();
        for k in 0..8 {
            let s = s.clone();
            let layer = if k % 2 == 0 { "race-a" } else { "race-b" };
            tasks.push(tokio::spawn(async move {
                let op = WriteOp::Create {
                    feature: feature(None, Some(point(2.0, 2.0)), json!({"round": round})),
                };
                s.apply(request(
                    layer,
                    vec![op],
                    &alice(),
                    Some(&format!("two-layers-{round}")),
                ))
                .await
                .expect("apply")
            }));
        }
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.expect("task"));
        }
        let applied: Vec<&WriteOutcome> = outcomes.iter().filter(|o| !o.replayed).collect();
        assert_eq!(applied.len(), 1, "round {round}: exactly one applies");
        assert!(
            outcomes.iter().all(|o| o.changes == applied[0].changes),
            "round {round}: every repeat gets the same answer"
        );
    }
    let (a, b) = (
        s.layer("race-a").await.expect("layer"),
        s.layer("race-b").await.expect("layer"),
    );
    assert_eq!(a.count + b.count, 10, "one feature per round in all");
    assert_eq!(a.seq + b.seq, 10, "one change per round in all");
}
