//! Concurrency: writers racing on one layer keep versions dense and lose no update; writes
//! are ordered when they are handed over.

use std::pin::Pin;
use std::task::Poll;

use super::*;

pub(super) async fn concurrent_writers<S: Store>(s: Arc<S>) {
    new_layer(&*s, "c", true).await;
    let ops = (0..4)
        .map(|i| create(&format!("f{i}"), i as f64, 0.0, json!({"n": 0})))
        .collect();
    ok(&*s, request("c", ops, &alice(), None)).await;
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let w = holder(&format!("writer-{t}"), None);
            for k in 0..25u32 {
                let id = format!("f{}", (t + k) % 4);
                let op = if k % 5 == 4 {
                    move_to(&id, f64::from(t), f64::from(k), None)
                } else {
                    patch(&id, json!({"n": k, "by": t}), None)
                };
                s.apply(request("c", vec![op], &w, None))
                    .await
                    .expect("concurrent edit");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    let log = all_changes(&*s, "c").await;
    assert_eq!(log.len(), 204);
    check_log(&log, 1);
    assert_eq!(s.layer("c").await.expect("layer").seq, 204);
    let mut state = BTreeMap::new();
    replay(&mut state, &log);
    assert_eq!(
        state,
        by_id(all_features(&*s, "c").await),
        "the log replays to the current features"
    );
}

pub(super) async fn lost_updates<S: Store>(s: Arc<S>) {
    new_layer(&*s, "counter", false).await;
    one(
        &*s,
        request(
            "counter",
            vec![create("n", 0.0, 0.0, json!({"n": 0}))],
            &alice(),
            None,
        ),
    )
    .await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let w = holder(&format!("inc-{t}"), None);
            let mut done = 0;
            while done < 25 {
                let f = s.get("counter", "n").await.expect("get").expect("counter");
                let n = f.properties.get("n").and_then(Value::as_i64).expect("n");
                match s
                    .apply(request(
                        "counter",
                        vec![patch("n", json!({"n": n + 1}), Some(f.version))],
                        &w,
                        None,
                    ))
                    .await
                {
                    Ok(_) => done += 1,
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => panic!("increment: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let f = s.get("counter", "n").await.expect("get").expect("counter");
    assert_eq!(
        (f.properties.get("n"), f.version),
        (Some(&json!(200)), 201),
        "optimistic concurrency loses no increment"
    );
    check_log(&all_changes(&*s, "counter").await, 1);
}

/// [`Store::apply`]'s contract: a write is in the store's queue after its future's first
/// poll, and a layer's writes are applied in that order, however their commits overlap.
pub(super) async fn ordered_on_first_poll<S: Store>(s: Arc<S>) {
    new_layer(&*s, "o", false).await;
    let w = alice();
    // In the order they are handed over. Each edit of a feature holds the version the one
    // before it gives, so each succeeds only when applied after it.
    let edits = vec![
        create("a", 0.0, 0.0, json!({"n": 0})),
        create("b", 1.0, 0.0, json!({"n": 0})),
        patch("a", json!({"n": 1}), Some(1)),
        patch("b", json!({"n": 1}), Some(1)),
        patch("a", json!({"n": 2}), Some(2)),
        create("c", 2.0, 0.0, json!({"n": 0})),
    ];
    let n = edits.len();
    // Made last to first: only the first poll may decide the order.
    let mut writes: Vec<Pin<Box<_>>> = edits
        .into_iter()
        .rev()
        .map(|op| Box::pin(s.apply(request("o", vec![op], &w, None))))
        .collect();
    writes.reverse();
    let mut outcomes = Vec::with_capacity(n);
    let mut waiting = Vec::new();
    for (i, mut write) in writes.into_iter().enumerate() {
        match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
            Poll::Ready(outcome) => outcomes.push((i, outcome)),
            Poll::Pending => waiting.push((i, write)),
        }
    }
    for (i, write) in waiting {
        outcomes.push((i, write.await));
    }
    outcomes.sort_by_key(|(i, _)| *i);
    let seqs: Vec<u64> = outcomes
        .into_iter()
        .map(|(i, o)| match o {
            Ok(o) => o.changes[0].seq,
            Err(e) => panic!("ordered_on_first_poll: edit {i} failed: {e}"),
        })
        .collect();
    assert_eq!(
        seqs,
        (1..=n as u64).collect::<Vec<_>>(),
        "ordered_on_first_poll: the log follows the order of the first polls"
    );
}
