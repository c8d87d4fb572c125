//! Uploaded raster tiles: versions, exact bytes, independence of layers and tiles, racing
//! uploads and addresses outside the pyramid.

use super::*;
use crate::{TileAddress, TilePut, TileStore};

fn at(z: u8, x: u32, y: u32) -> TileAddress {
    TileAddress { z, x, y }
}

/// Bytes no text encoding would keep: every byte value, zeros included.
fn binary(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub(super) async fn uploaded_tiles<S: Store + TileStore>(s: Arc<S>) {
    let t = at(3, 2, 1);
    assert_eq!(s.get_tile("img", t).await.expect("get"), None);
    assert_eq!(s.tile_zooms("img").await.expect("zooms"), None);

    // Versions: at least the floor, then one above the stored one.
    let one = binary(1 << 20, 7);
    assert_eq!(
        s.put_tile("img", t, one.clone(), 2).await.expect("put"),
        TilePut {
            version: 2,
            previous: None
        }
    );
    assert_eq!(
        s.get_tile("img", t).await.expect("get"),
        Some((2, one)),
        "the exact bytes come back"
    );
    let two = binary(1000, 9);
    assert_eq!(
        s.put_tile("img", t, two.clone(), 2).await.expect("put"),
        TilePut {
            version: 3,
            previous: Some(2)
        }
    );
    assert_eq!(s.get_tile("img", t).await.expect("get"), Some((3, two)));
    assert_eq!(
        s.put_tile("img", t, b"ten".to_vec(), 10)
            .await
            .expect("put")
            .version,
        10
    );
    // An empty tile is a tile.
    assert_eq!(
        s.put_tile("img", at(0, 0, 0), Vec::new(), 0)
            .await
            .expect("put")
            .version,
        1
    );
    assert_eq!(
        s.get_tile("img", at(0, 0, 0)).await.expect("get"),
        Some((1, Vec::new()))
    );

    // Layers and tiles are independent.
    assert_eq!(
        s.put_tile("other", t, b"x".to_vec(), 0)
            .await
            .expect("put")
            .version,
        1
    );
    assert_eq!(
        s.get_tile("img", at(3, 1, 2)).await.expect("get"),
        None,
        "x and y are not swapped"
    );
    assert_eq!(
        s.put_tile("img", at(12, 4095, 0), b"deep".to_vec(), 0)
            .await
            .expect("put")
            .version,
        1
    );
    assert_eq!(s.tile_zooms("img").await.expect("zooms"), Some((0, 12)));
    assert_eq!(s.tile_zooms("other").await.expect("zooms"), Some((3, 3)));

    // Racing uploads of one tile: distinct versions, and the highest holds its own bytes.
    let race = at(5, 10, 20);
    let mut tasks = Vec::new();
    for k in 0..8u8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let data = vec![k; 100];
            let put = s.put_tile("img", race, data, 0).await.expect("racing put");
            (put.version, k)
        }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.expect("task"));
    }
    versions.sort();
    assert_eq!(
        versions.iter().map(|v| v.0).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>(),
        "one version each"
    );
    let (last_version, last_k) = versions[7];
    assert_eq!(
        s.get_tile("img", race).await.expect("get"),
        Some((last_version, vec![last_k; 100]))
    );

    // Hostile addresses and names change nothing.
    for bad in [at(31, 0, 0), at(3, 8, 0), at(3, 0, 8), at(0, 1, 0)] {
        let e = s.put_tile("img", bad, b"x".to_vec(), 0).await.unwrap_err();
        assert!(matches!(e, StoreError::Invalid(_)), "{bad:?}: {e:?}");
    }
    let e = s.put_tile("", t, b"x".to_vec(), 0).await.unwrap_err();
    assert!(matches!(e, StoreError::Invalid(_)), "{e:?}");
    assert_eq!(s.tile_zooms("img").await.expect("zooms"), Some((0, 12)));
}
