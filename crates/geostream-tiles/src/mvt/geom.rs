//! Geometry in tile space: projection, clipping, simplification, rounding and
//! winding. Everything works on `f64` pairs until the final rounding so that
//! clipping and simplification do not accumulate integer error.

use crate::tile::lon_lat_to_world;

/// A point in tile space (x right, y down, 0..extent inside the tile).
pub(super) type P = (f64, f64);
/// A point on the integer tile grid.
pub(super) type IP = (i32, i32);

/// Maps lon/lat to the tile's pixel space.
#[derive(Debug, Clone, Copy)]
pub(super) struct Projector {
    /// Tiles per axis at this zoom times the extent.
    scale: f64,
    /// Origin of the tile in the same units.
    ox: f64,
    oy: f64,
}

impl Projector {
    pub(super) fn new(z: u8, x: u32, y: u32, extent: u32) -> Self {
        let e = f64::from(extent);
        let scale = f64::from(1u32 << z) * e;
        Self {
            scale,
            ox: f64::from(x) * e,
            oy: f64::from(y) * e,
        }
    }

    /// `None` for non-finite input, so NaN never reaches the clipper.
    pub(super) fn project(&self, lon: f64, lat: f64) -> Option<P> {
        if !lon.is_finite() || !lat.is_finite() {
            return None;
        }
        let (wx, wy) = lon_lat_to_world(lon, lat);
        Some((wx * self.scale - self.ox, wy * self.scale - self.oy))
    }

    /// The tile-space columns of the antimeridian: longitude -180° and 180°.
    pub(super) fn world_columns(&self) -> (f64, f64) {
        (-self.ox, self.scale - self.ox)
    }
}

/// Longitudes made continuous along a path: every step goes the short way
/// round, so a step from 179.9° to -180° lands on 180° rather than crossing
/// the whole world. `None` when no step is longer than 180° (nothing to do),
/// or when `closed` and the path comes back one world away from where it
/// started: a ring around a pole (Antarctica, cut along the antimeridian and
/// closed along it) must stay as it is, since its long edge is real.
pub(super) fn unwrap_lons(lon_lat: &[P], closed: bool) -> Option<Vec<P>> {
    if !lon_lat.windows(2).any(|w| (w[1].0 - w[0].0).abs() > 180.0) {
        return None;
    }
    let mut out = Vec::with_capacity(lon_lat.len());
    let mut shift = 0.0;
    let mut prev = lon_lat[0].0;
    for &(lon, lat) in lon_lat {
        let step = lon - prev;
        if step > 180.0 {
            shift -= 360.0;
        } else if step < -180.0 {
            shift += 360.0;
        }
        prev = lon;
        out.push((lon + shift, lat));
    }
    if closed && shift != 0.0 {
        return None;
    }
    Some(out)
}

/// The clip rectangle, in tile units: the tile plus its buffer, narrowed
/// across the antimeridian to the world's width (see [`ClipRect::within_x`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct ClipRect {
    pub(super) x0: f64,
    pub(super) x1: f64,
    pub(super) y0: f64,
    pub(super) y1: f64,
}

impl ClipRect {
    /// The square from `min` to `max` on both axes.
    pub(super) fn square(min: f64, max: f64) -> Self {
        Self {
            x0: min,
            x1: max,
            y0: min,
            y1: max,
        }
    }

    /// The rectangle cut to the columns from `x0` to `x1`; `None` when
    /// nothing is left.
    pub(super) fn within_x(&self, x0: f64, x1: f64) -> Option<Self> {
        let r = Self {
            x0: self.x0.max(x0),
            x1: self.x1.min(x1),
            ..*self
        };
        (r.x0 < r.x1).then_some(r)
    }

    pub(super) fn contains(&self, p: P) -> bool {
        p.0 >= self.x0 && p.0 <= self.x1 && p.1 >= self.y0 && p.1 <= self.y1
    }

    /// Whether an axis-aligned box (min x, min y, max x, max y) touches the
    /// rectangle.
    pub(super) fn touches(&self, b: [f64; 4]) -> bool {
        b[0] <= self.x1 && b[2] >= self.x0 && b[1] <= self.y1 && b[3] >= self.y0
    }

    fn inside_box(&self, b: [f64; 4]) -> bool {
        b[0] >= self.x0 && b[2] <= self.x1 && b[1] >= self.y0 && b[3] <= self.y1
    }
}

fn bbox_of(points: &[P]) -> [f64; 4] {
    points.iter().fold(
        [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ],
        |b, p| [b[0].min(p.0), b[1].min(p.1), b[2].max(p.0), b[3].max(p.1)],
    )
}

/// Clips a polyline to the rectangle, keeping each stretch that stays inside
/// as one connected run: a line that leaves and re-enters the tile becomes two
/// parts, never a chord across the gap.
pub(super) fn clip_line(points: &[P], r: ClipRect) -> Vec<Vec<P>> {
    if points.len() < 2 {
        return Vec::new();
    }
    let b = bbox_of(points);
    if !r.touches(b) {
        return Vec::new();
    }
    if r.inside_box(b) {
        return vec![points.to_vec()];
    }
    let mut runs = Vec::new();
    let mut run: Vec<P> = Vec::new();
    for seg in points.windows(2) {
        let Some((p, q, start_clipped, end_clipped)) = clip_segment(seg[0], seg[1], r) else {
            if run.len() >= 2 {
                runs.push(std::mem::take(&mut run));
            }
            run.clear();
            continue;
        };
        if start_clipped || run.is_empty() {
            if run.len() >= 2 {
                runs.push(std::mem::take(&mut run));
            }
            run.clear();
            run.push(p);
        }
        run.push(q);
        if end_clipped {
            if run.len() >= 2 {
                runs.push(std::mem::take(&mut run));
            }
            run.clear();
        }
    }
    if run.len() >= 2 {
        runs.push(run);
    }
    runs
}

/// Liang–Barsky clipping of one segment. Returns the visible part and whether
/// each end was moved onto the rectangle's edge.
fn clip_segment(a: P, b: P, r: ClipRect) -> Option<(P, P, bool, bool)> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let mut t0 = 0.0f64;
    let mut t1 = 1.0f64;
    // Each pair: (p, q) for the four half-planes x >= min, x <= max, y >= min,
    // y <= max, in the usual p·t <= q form.
    let checks = [
        (-dx, a.0 - r.x0),
        (dx, r.x1 - a.0),
        (-dy, a.1 - r.y0),
        (dy, r.y1 - a.1),
    ];
    for (p, q) in checks {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let t = q / p;
            if p < 0.0 {
                if t > t1 {
                    return None;
                }
                if t > t0 {
                    t0 = t;
                }
            } else {
                if t < t0 {
                    return None;
                }
                if t < t1 {
                    t1 = t;
                }
            }
        }
    }
    let p = if t0 > 0.0 {
        (a.0 + t0 * dx, a.1 + t0 * dy)
    } else {
        a
    };
    let q = if t1 < 1.0 {
        (a.0 + t1 * dx, a.1 + t1 * dy)
    } else {
        b
    };
    Some((p, q, t0 > 0.0, t1 < 1.0))
}

/// Sutherland–Hodgman clipping of a ring (given without its closing point)
/// against the rectangle. Parts of the result may run along the rectangle's
/// edges; that is harmless for rendering and keeps the ring a single ring.
pub(super) fn clip_ring(ring: &[P], r: ClipRect) -> Vec<P> {
    if ring.len() < 3 {
        return Vec::new();
    }
    let b = bbox_of(ring);
    if !r.touches(b) {
        return Vec::new();
    }
    if r.inside_box(b) {
        return ring.to_vec();
    }
    let mut out = ring.to_vec();
    // Edges: 0 = left (x >= min), 1 = right (x <= max), 2 = top (y >= min),
    // 3 = bottom (y <= max).
    for edge in 0..4 {
        if out.is_empty() {
            break;
        }
        let input = std::mem::take(&mut out);
        let inside = |p: P| match edge {
            0 => p.0 >= r.x0,
            1 => p.0 <= r.x1,
            2 => p.1 >= r.y0,
            _ => p.1 <= r.y1,
        };
        let cross = |a: P, b: P| {
            let t = match edge {
                0 => (r.x0 - a.0) / (b.0 - a.0),
                1 => (r.x1 - a.0) / (b.0 - a.0),
                2 => (r.y0 - a.1) / (b.1 - a.1),
                _ => (r.y1 - a.1) / (b.1 - a.1),
            };
            let mut p = (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1));
            // Snap exactly onto the edge so later edges see it as inside.
            match edge {
                0 => p.0 = r.x0,
                1 => p.0 = r.x1,
                2 => p.1 = r.y0,
                _ => p.1 = r.y1,
            }
            p
        };
        let mut prev = input[input.len() - 1];
        let mut prev_in = inside(prev);
        for &cur in &input {
            let cur_in = inside(cur);
            if cur_in {
                if !prev_in {
                    out.push(cross(prev, cur));
                }
                out.push(cur);
            } else if prev_in {
                out.push(cross(prev, cur));
            }
            prev = cur;
            prev_in = cur_in;
        }
    }
    out
}

fn seg_dist2(p: P, a: P, b: P) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let (cx, cy) = if len2 == 0.0 {
        a
    } else {
        let t = (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0);
        (a.0 + t * dx, a.1 + t * dy)
    };
    (p.0 - cx) * (p.0 - cx) + (p.1 - cy) * (p.1 - cy)
}

/// Douglas–Peucker with an explicit stack (no recursion depth to exhaust on
/// long lines). Keeps both end points.
pub(super) fn simplify(points: &[P], tolerance: f64) -> Vec<P> {
    let n = points.len();
    if n <= 2 || tolerance <= 0.0 {
        return points.to_vec();
    }
    let tol2 = tolerance * tolerance;
    let mut keep = vec![false; n];
    keep[0] = true;
    keep[n - 1] = true;
    let mut stack = vec![(0usize, n - 1)];
    while let Some((a, b)) = stack.pop() {
        if b <= a + 1 {
            continue;
        }
        let mut best = (0.0f64, a);
        for (i, &p) in points.iter().enumerate().take(b).skip(a + 1) {
            let d = seg_dist2(p, points[a], points[b]);
            if d > best.0 {
                best = (d, i);
            }
        }
        if best.0 > tol2 {
            keep[best.1] = true;
            stack.push((a, best.1));
            stack.push((best.1, b));
        }
    }
    points
        .iter()
        .zip(keep)
        .filter_map(|(p, k)| k.then_some(*p))
        .collect()
}

/// Simplifies a ring given without its closing point, treating it as closed.
pub(super) fn simplify_ring(ring: &[P], tolerance: f64) -> Vec<P> {
    if ring.len() <= 3 || tolerance <= 0.0 {
        return ring.to_vec();
    }
    let mut closed = ring.to_vec();
    closed.push(ring[0]);
    let mut s = simplify(&closed, tolerance);
    s.pop();
    s
}

/// Rounds to the integer grid and drops consecutive duplicates.
pub(super) fn round_dedup(points: &[P]) -> Vec<IP> {
    let mut out: Vec<IP> = Vec::with_capacity(points.len());
    for p in points {
        // Clipped coordinates lie within the buffered tile, far inside i32.
        let q = (p.0.round() as i32, p.1.round() as i32);
        if out.last() != Some(&q) {
            out.push(q);
        }
    }
    out
}

/// Rounds a ring (no closing point) and drops duplicates, including a last
/// point equal to the first.
pub(super) fn round_ring(ring: &[P]) -> Vec<IP> {
    let mut out = round_dedup(ring);
    while out.len() > 1 && out.last() == out.first() {
        out.pop();
    }
    out
}

/// Twice the signed area by the MVT spec's formula (positive = clockwise on
/// screen, y down = exterior ring).
pub(super) fn area2(ring: &[IP]) -> i64 {
    let n = ring.len();
    let mut sum = 0i64;
    for i in 0..n {
        let (x0, y0) = ring[i];
        let (x1, y1) = ring[(i + 1) % n];
        sum += i64::from(x0) * i64::from(y1) - i64::from(x1) * i64::from(y0);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: ClipRect = ClipRect {
        x0: 0.0,
        x1: 10.0,
        y0: 0.0,
        y1: 10.0,
    };

    #[test]
    fn line_leaving_and_reentering_gives_two_runs() {
        let line = [
            (1.0, 1.0),
            (5.0, 1.0),
            (15.0, 1.0),
            (15.0, 5.0),
            (5.0, 5.0),
            (2.0, 5.0),
        ];
        let runs = clip_line(&line, R);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0], vec![(1.0, 1.0), (5.0, 1.0), (10.0, 1.0)]);
        assert_eq!(runs[1], vec![(10.0, 5.0), (5.0, 5.0), (2.0, 5.0)]);
        // Crossing straight through.
        let runs = clip_line(&[(-5.0, 5.0), (15.0, 5.0)], R);
        assert_eq!(runs, vec![vec![(0.0, 5.0), (10.0, 5.0)]]);
        assert!(clip_line(&[(-5.0, -5.0), (-1.0, 20.0)], R).is_empty());
    }

    #[test]
    fn ring_clipped_to_rectangle() {
        let square = [(-5.0, -5.0), (5.0, -5.0), (5.0, 5.0), (-5.0, 5.0)];
        let c = clip_ring(&square, R);
        let ints = round_ring(&c);
        assert_eq!(area2(&ints).abs(), 50);
        assert!(c.iter().all(|p| R.contains(*p)));
        // Covering the whole rectangle gives the rectangle.
        let big = [(-50.0, -50.0), (50.0, -50.0), (50.0, 50.0), (-50.0, 50.0)];
        assert_eq!(area2(&round_ring(&clip_ring(&big, R))).abs(), 200);
        let away = [(20.0, 20.0), (30.0, 20.0), (30.0, 30.0)];
        assert!(clip_ring(&away, R).is_empty());
    }

    #[test]
    fn simplify_drops_small_wiggles_keeps_corners() {
        let line = [(0.0, 0.0), (5.0, 0.2), (10.0, 0.0), (10.0, 10.0)];
        assert_eq!(
            simplify(&line, 1.0),
            vec![(0.0, 0.0), (10.0, 0.0), (10.0, 10.0)]
        );
        let ring = [
            (0.0, 0.0),
            (10.0, 0.0),
            (10.0, 0.3),
            (10.0, 10.0),
            (0.0, 10.0),
        ];
        assert_eq!(simplify_ring(&ring, 1.0).len(), 4);
    }

    #[test]
    fn unwrapping_takes_the_short_way_round() {
        // A ring crossing the antimeridian (Wrangel Island as world-atlas
        // writes it): continuous beyond 180°.
        let ring = [
            (178.7, 71.1),
            (-180.0, 71.5),
            (-179.0, 71.0),
            (-180.0, 70.8),
            (178.9, 70.8),
            (178.7, 71.1),
        ];
        let u = unwrap_lons(&ring, true).unwrap();
        assert_eq!(u[1], (180.0, 71.5));
        assert_eq!(u[2], (181.0, 71.0));
        assert_eq!(u[4], (178.9, 70.8));
        // Nothing to do for ordinary paths.
        assert!(unwrap_lons(&[(0.0, 0.0), (170.0, 0.0), (-10.0, 1.0)], false).is_none());
        // A ring around the pole keeps its edge along the cut.
        let polar = [
            (-180.0, -80.0),
            (0.0, -70.0),
            (180.0, -80.0),
            (-180.0, -80.0),
        ];
        assert!(unwrap_lons(&polar, true).is_none());
        // An open line may end a world away.
        let line = [(170.0, 0.0), (-170.0, 0.0), (-150.0, 0.0)];
        assert_eq!(
            unwrap_lons(&line, false).unwrap(),
            vec![(170.0, 0.0), (190.0, 0.0), (210.0, 0.0)]
        );
    }

    #[test]
    fn area_sign_follows_spec() {
        // Clockwise on screen (y down): right along the top, down, back.
        let cw = [(0, 0), (10, 0), (10, 10), (0, 10)];
        assert!(area2(&cw) > 0);
        let ccw: Vec<IP> = cw.iter().rev().copied().collect();
        assert!(area2(&ccw) < 0);
    }
}
