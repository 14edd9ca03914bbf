//! Packing (TRL's `packing` with its default best-fit-decreasing strategy): short examples
//! are placed into rows of at most `capacity` tokens, longest first, each into the fullest
//! row it still fits in. A packed row carries `position_ids` restarting at 0 where each
//! example begins, from which the model keeps attention inside each example and rotates
//! each from position 0, so a packed row computes what its examples would apart.

/// The rows, as lists of example indices (in placement order), for examples of `lengths`
/// tokens (each at most `capacity`).
pub fn best_fit_decreasing(lengths: &[usize], capacity: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Longest first; equal lengths keep the data's order (a stable sort).
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    // Rows by their free space, so that the best fit is a range query: (free, row).
    let mut by_free: std::collections::BTreeSet<(usize, usize)> = std::collections::BTreeSet::new();
    for i in order {
        let length = lengths[i];
        match by_free.range((length, 0)..).next().copied() {
            Some((free, row)) => {
                by_free.remove(&(free, row));
                rows[row].0 = free - length;
                rows[row].1.push(i);
                by_free.insert((free - length, row));
            }
            None => {
                rows.push((capacity - length, vec![i]));
                by_free.insert((capacity - length, rows.len() - 1));
            }
        }
    }
    rows.into_iter().map(|(_, members)| members).collect()
}

/// Packed rows: each row's token ids, next-token targets and positions, concatenated
/// from its examples. `targets[i]` holds example i's target at each position but its last;
/// the last position of each example gets -100, as it has no next token of its own.
pub struct Packed {
    pub ids: Vec<Vec<i64>>,
    pub targets: Vec<Vec<i64>>,
    pub positions: Vec<Vec<i64>>,
}

pub fn pack(sequences: &[Vec<i64>], targets: &[Vec<i64>], capacity: usize) -> Packed {
    let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
    let rows = best_fit_decreasing(&lengths, capacity);
    let mut packed = Packed { ids: Vec::new(), targets: Vec::new(), positions: Vec::new() };
    for members in rows {
        let (mut ids, mut next, mut positions) = (Vec::new(), Vec::new(), Vec::new());
        for i in members {
            ids.extend_from_slice(&sequences[i]);
            next.extend_from_slice(&targets[i]);
            next.push(-100);
            positions.extend(0..sequences[i].len() as i64);
        }
        packed.ids.push(ids);
        packed.targets.push(next);
        packed.positions.push(positions);
    }
    packed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_example_goes_to_the_fullest_row_it_fits() {
        // Longest first: 7 opens row 0 (free 3), 5 row 1 (free 5), 4 row 1 (free 1),
        // 3 row 0 (free 0), 2 a new row 2, 1 row 1 (the fullest that fits).
        let rows = best_fit_decreasing(&[3, 7, 1, 5, 2, 4], 10);
        assert_eq!(rows, vec![vec![1, 0], vec![3, 5, 2], vec![4]]);
        let lengths = [3, 7, 1, 5, 2, 4];
        for row in &rows {
            assert!(row.iter().map(|&i| lengths[i]).sum::<usize>() <= 10);
        }
    }

    #[test]
    fn packed_rows_restart_positions_and_end_each_example_unlearned() {
        let sequences = vec![vec![10, 11, 12], vec![20, 21]];
        let targets = vec![vec![11, 12], vec![21]];
        let packed = pack(&sequences, &targets, 8);
        assert_eq!(packed.ids, vec![vec![10, 11, 12, 20, 21]]);
        assert_eq!(packed.targets, vec![vec![11, 12, -100, 21, -100]]);
        assert_eq!(packed.positions, vec![vec![0, 1, 2, 0, 1]]);
    }
}
