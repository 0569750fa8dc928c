//! Growth over a soak: the least-squares slope of a series of readings, per hour. A leak shows
//! as a steady slope; allocator noise and a warm-up do not, once the warm-up is left out.

/// The slope of `points` (seconds, value), in value per hour; `None` with fewer than two
/// distinct times.
pub fn per_hour(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_v = points.iter().map(|p| p.1).sum::<f64>() / n;
    let var: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    if var == 0.0 {
        return None;
    }
    let cov: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_v)).sum();
    Some(cov / var * 3600.0)
}

/// The readings after the first `fraction` of the run (the warm-up: first model load, caches,
/// the allocator's arenas filling).
pub fn after_warm_up(points: &[(f64, f64)], fraction: f64) -> &[(f64, f64)] {
    let Some(last) = points.last() else { return points };
    let cut = last.0 * fraction;
    let start = points.iter().position(|p| p.0 >= cut).unwrap_or(points.len());
    &points[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_leak_has_its_slope_and_noise_around_a_level_has_none() {
        let leak: Vec<(f64, f64)> = (0..60).map(|i| (i as f64 * 60.0, 1000.0 + i as f64 * 2.0)).collect();
        let slope = per_hour(&leak).unwrap();
        assert!((slope - 120.0).abs() < 1e-9, "{slope}");
        let flat: Vec<(f64, f64)> =
            (0..60).map(|i| (i as f64 * 60.0, 1000.0 + if i % 2 == 0 { 8.0 } else { -8.0 })).collect();
        assert!(per_hour(&flat).unwrap().abs() < 1.0);
        assert_eq!(per_hour(&[(1.0, 2.0)]), None);
        assert_eq!(per_hour(&[(1.0, 2.0), (1.0, 3.0)]), None);
    }

    #[test]
    fn the_warm_up_is_left_out() {
        let points: Vec<(f64, f64)> = (0..=10).map(|i| (i as f64 * 10.0, i as f64)).collect();
        let rest = after_warm_up(&points, 0.25);
        assert_eq!(rest.first(), Some(&(30.0, 3.0)));
        assert_eq!(after_warm_up(&[], 0.25), &[]);
    }
}
