//! Geofence definitions, evaluation cursors and the evaluator's lease.

use super::*;
use crate::FenceStore;

pub(super) async fn geofences<S: Store + FenceStore>(s: Arc<S>) {
    assert!(s.fences().await.expect("fences").is_empty());
    s.create_fence("b", r#"{"n":2}"#.into())
        .await
        .expect("create");
    s.create_fence("a", r#"{"n":1}"#.into())
        .await
        .expect("create");
    assert_eq!(
        s.create_fence("a", "{}".into()).await,
        Err(StoreError::FenceExists("a".into())),
        "a taken name is refused and the fence is kept"
    );
    assert!(matches!(
        s.create_fence("no spaces", "{}".into()).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        s.fences().await.expect("fences"),
        vec![
            ("a".to_owned(), r#"{"n":1}"#.to_owned()),
            ("b".to_owned(), r#"{"n":2}"#.to_owned())
        ],
        "in name order, bodies as stored"
    );
    assert!(s.delete_fence("a").await.expect("delete"));
    assert!(!s.delete_fence("a").await.expect("delete"), "already gone");
    assert_eq!(s.fences().await.expect("fences").len(), 1);

    // Cursors: upserted, per layer.
    assert!(s.fence_cursors().await.expect("cursors").is_empty());
    s.save_fence_cursors(vec![("ships".into(), 10), ("zones".into(), 3)])
        .await
        .expect("save");
    s.save_fence_cursors(vec![("ships".into(), 25)])
        .await
        .expect("save");
    assert_eq!(
        s.fence_cursors().await.expect("cursors"),
        vec![("ships".to_owned(), 25), ("zones".to_owned(), 3)]
    );

    // The lease: one holder at a time until it expires or is released.
    assert!(
        s.fence_lease("n1", 300).await.expect("lease"),
        "free: taken"
    );
    assert!(
        s.fence_lease("n1", 300).await.expect("lease"),
        "renewed by its holder"
    );
    assert!(
        !s.fence_lease("n2", 300).await.expect("lease"),
        "held by another"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        s.fence_lease("n2", 10_000).await.expect("lease"),
        "expired: taken over"
    );
    assert!(
        !s.fence_lease("n1", 300).await.expect("lease"),
        "the old holder lost it"
    );
    s.release_fence_lease("n1").await.expect("release");
    assert!(
        !s.fence_lease("n1", 300).await.expect("lease"),
        "only the holder releases"
    );
    s.release_fence_lease("n2").await.expect("release");
    assert!(
        s.fence_lease("n1", 300).await.expect("lease"),
        "released: free again"
    );
}
