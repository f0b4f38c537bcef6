//! Which windows an event time falls into (tumbling, hopping; sessions are
//! formed from a group's event times in `session.rs`). Times are µs since
//! the epoch (or since 1970-01-01T00:00 for zone-less times: the same grid).

use super::spec::WindowSpec;

/// A window `[start, end)`, µs.
pub type Window = (i64, i64);

/// The fixed windows (tumbling, hopping) containing `t`, oldest first.
/// `Global` is one window spanning all time; sessions have none here.
pub fn windows_of(spec: &WindowSpec, t: i64) -> Vec<Window> {
    match *spec {
        WindowSpec::Global => vec![(i64::MIN, i64::MAX)],
        WindowSpec::Tumbling { size, offset } => {
            let start = offset + (t - offset).div_euclid(size) * size;
            vec![(start, start.saturating_add(size))]
        }
        WindowSpec::Hopping {
            size,
            slide,
            offset,
        } => {
            // Starts s = offset + k*slide with s <= t < s + size.
            let last = (t - offset).div_euclid(slide);
            let first = (t - offset - size).div_euclid(slide) + 1;
            (first..=last)
                .map(|k| {
                    let start = offset + k * slide;
                    (start, start.saturating_add(size))
                })
                .collect()
        }
        WindowSpec::Session { .. } => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;

    #[test]
    fn tumbling_days_align_to_midnight_also_before_1970() {
        let spec = WindowSpec::Tumbling {
            size: DAY,
            offset: 0,
        };
        assert_eq!(windows_of(&spec, DAY + 5), vec![(DAY, 2 * DAY)]);
        assert_eq!(windows_of(&spec, DAY), vec![(DAY, 2 * DAY)]);
        assert_eq!(windows_of(&spec, -1), vec![(-DAY, 0)]);
    }

    #[test]
    fn hopping_covers_the_time_once_per_slide() {
        let spec = WindowSpec::Hopping {
            size: 7 * DAY,
            slide: DAY,
            offset: 0,
        };
        let t = 10 * DAY + 3;
        let w = windows_of(&spec, t);
        assert_eq!(w.len(), 7);
        assert_eq!(w[0], (4 * DAY, 11 * DAY));
        assert_eq!(w[6], (10 * DAY, 17 * DAY));
        assert!(w.iter().all(|&(s, e)| s <= t && t < e));
        // exactly on a boundary: the window starting there, not the one ending there
        let w = windows_of(&spec, 10 * DAY);
        assert_eq!(w[0], (4 * DAY, 11 * DAY));
        assert_eq!(w[6], (10 * DAY, 17 * DAY));
    }
}
