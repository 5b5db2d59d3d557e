//! Slab sizing: as wide as `--max-slab` allows while a slab's data stays within its memory
//! budget, narrower where the source is dense.

use super::read::Range;

pub(super) struct Planner {
    cursor: i64,
    end: i64,
    width: i64,
    min: i64,
    max: i64,
    budget: usize,
}

impl Planner {
    pub(super) fn new(cursor: i64, end: i64, max: i64, min: i64, budget: usize) -> Planner {
        Planner {
            cursor,
            end,
            width: max,
            min,
            max,
            budget,
        }
    }

    /// The next slab, or `None` at the end.
    pub(super) fn next(&mut self) -> Option<Range> {
        if self.cursor >= self.end {
            return None;
        }
        let r = Range {
            start: self.cursor,
            end: self.cursor.saturating_add(self.width).min(self.end),
        };
        self.cursor = r.end;
        Some(r)
    }

    /// The width that puts `memory`-per-`len` data at half the budget (room for denser parts).
    fn fit(&self, len: i64, memory: usize) -> i64 {
        let target = self.budget as f64 / 2.0;
        ((len as f64) * target / memory.max(1) as f64) as i64
    }

    /// A slab of `range` took `memory`: aim the next ones at half the budget, growing at most
    /// twofold per slab.
    pub(super) fn observed(&mut self, range: Range, memory: usize) {
        let grown = self.width.saturating_mul(2).min(self.max);
        self.width = if memory == 0 {
            grown
        } else {
            self.fit(range.width(), memory)
                .clamp(self.min, grown.max(self.min))
        };
    }

    /// `range` holds more than the budget (`memory` seen when the read stopped): the halves to
    /// read instead, or `None` when it is already as narrow as allowed.
    pub(super) fn too_big(&mut self, range: Range, memory: usize) -> Option<(Range, Range)> {
        if range.width() <= self.min {
            return None;
        }
        let mid = range.start + (range.width() / 2).max(self.min).min(range.width() - 1);
        // `memory` is a lower bound (the read stopped early): never wider than half.
        self.width = self
            .fit(range.width(), memory)
            .min(range.width() / 2)
            .max(self.min);
        Some((
            Range {
                start: range.start,
                end: mid,
            },
            Range {
                start: mid,
                end: range.end,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn slabs_tile_the_range_without_gaps_or_overlaps() {
        let mut p = Planner::new(0, 10 * H + 5, H, 1000, 1 << 20);
        let mut at = 0;
        while let Some(r) = p.next() {
            assert_eq!(r.start, at);
            assert!(r.width() > 0 && r.width() <= H);
            at = r.end;
        }
        assert_eq!(at, 10 * H + 5);
    }

    #[test]
    fn dense_data_narrows_slabs_and_sparse_data_widens_them_again() {
        let budget = 8 << 20;
        let mut p = Planner::new(0, 100 * H, H, 1000, budget);
        let r = p.next().unwrap();
        let (a, b) = p.too_big(r, budget + 1).unwrap();
        assert_eq!((a.start, a.end, b.start, b.end), (0, H / 2, H / 2, H));
        assert!(p.width <= H / 2);
        // Half a slab used the whole budget: the next aim at half of it.
        p.observed(a, budget);
        assert_eq!(p.width, H / 4);
        // Empty stretches: double back up to the maximum.
        for _ in 0..5 {
            p.observed(
                Range {
                    start: 0,
                    end: p.width,
                },
                0,
            );
        }
        assert_eq!(p.width, H);
    }

    #[test]
    fn a_slab_at_the_minimum_cannot_be_split() {
        let mut p = Planner::new(0, H, H, 1000, 1 << 20);
        assert!(
            p.too_big(
                Range {
                    start: 0,
                    end: 1000
                },
                2 << 20
            )
            .is_none()
        );
        let (a, b) = p
            .too_big(
                Range {
                    start: 0,
                    end: 1500,
                },
                2 << 20,
            )
            .unwrap();
        assert_eq!((a.end, b.start, b.end), (1000, 1000, 1500));
    }
}
