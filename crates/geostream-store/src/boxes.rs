//! Query boxes, as both backends search their spatial indexes with them.

use geostream_core::feature::BBox;
use geostream_filter::{bbox_halves, boxes_overlap};

/// The boxes to search a spatial index with, for a query box and a filter's covering box
/// (either may be absent): `None` when nothing limits the search, an empty list when no
/// feature can match (the two do not overlap). A query box crossing the antimeridian is
/// searched as its two halves.
pub(crate) fn search_boxes(query: Option<BBox>, filter: Option<BBox>) -> Option<Vec<BBox>> {
    let Some(q) = query else {
        return filter.map(|f| vec![f]);
    };
    let (first, second) = bbox_halves(q);
    let halves = std::iter::once(first).chain(second);
    Some(match filter {
        None => halves.collect(),
        Some(f) => halves
            .filter_map(|p| {
                let i = [
                    p[0].max(f[0]),
                    p[1].max(f[1]),
                    p[2].min(f[2]),
                    p[3].min(f[3]),
                ];
                (i[0] <= i[2] && i[1] <= i[3]).then_some(i)
            })
            .collect(),
    })
}

/// Whether a feature's box passes the query box, exactly (in f64: what an index answers are
/// candidates, its boxes rounded outwards).
pub(crate) fn passes_query_box(query: Option<BBox>, feature: Option<BBox>) -> bool {
    match (query, feature) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(q), Some(f)) => {
            let (first, second) = bbox_halves(q);
            boxes_overlap(first, f) || second.is_some_and(|h| boxes_overlap(h, f))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_boxes() {
        let across = [170.0, -10.0, -170.0, 10.0];
        assert_eq!(
            search_boxes(Some(across), None),
            Some(vec![
                [170.0, -10.0, 180.0, 10.0],
                [-180.0, -10.0, -170.0, 10.0]
            ])
        );
        assert!(passes_query_box(
            Some(across),
            Some([-175.0, 0.0, -175.0, 0.0])
        ));
        assert!(passes_query_box(
            Some(across),
            Some([175.0, 0.0, 175.0, 0.0])
        ));
        assert!(!passes_query_box(Some(across), Some([0.0, 0.0, 0.0, 0.0])));
        assert!(
            passes_query_box(Some([0.0, 0.0, 1.0, 1.0]), Some([1.0, 1.0, 2.0, 2.0])),
            "touching edges count"
        );
        assert!(!passes_query_box(
            Some([0.0, 0.0, 1.0, 1.0]),
            Some([1.5, 0.0, 2.0, 2.0])
        ));
        assert!(!passes_query_box(Some([0.0, 0.0, 1.0, 1.0]), None));
        assert!(passes_query_box(None, None));
        assert_eq!(
            search_boxes(Some([0.0, 0.0, 10.0, 10.0]), Some([5.0, 5.0, 20.0, 20.0])),
            Some(vec![[5.0, 5.0, 10.0, 10.0]])
        );
        assert_eq!(
            search_boxes(Some(across), Some([175.0, -5.0, 180.0, 5.0])),
            Some(vec![[175.0, -5.0, 180.0, 5.0]]),
            "only the half the filter overlaps"
        );
        assert_eq!(
            search_boxes(Some([0.0, 0.0, 1.0, 1.0]), Some([5.0, 5.0, 20.0, 20.0])),
            Some(vec![])
        );
        assert_eq!(
            search_boxes(None, Some([5.0, 5.0, 20.0, 20.0])),
            Some(vec![[5.0, 5.0, 20.0, 20.0]])
        );
        assert_eq!(search_boxes(None, None), None);
    }
}
