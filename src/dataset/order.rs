//! The order llm-compressor 0.14 feeds calibration samples in when it does not shuffle:
//! `LengthAwareSampler` (`llmcompressor/datasets/utils.py`) takes
//! `torch.argsort(torch.tensor(lengths), descending=True)`, longest first. That sort is not
//! stable: torch sorts (key, index) pairs on the CPU with `std::sort`, so samples of equal
//! length come out in the order libstdc++'s introsort leaves them. This is a port of that
//! introsort (`bits/stl_algo.h`, `bits/stl_heap.h`) comparing keys only, so that the order
//! (and with it the Hessians' summation order) is the same as llm-compressor's.

/// Row indices, longest first, ties in the order `torch.argsort(descending=True)` gives.
pub fn length_aware(lengths: &[usize]) -> Vec<usize> {
    let mut v: Vec<(usize, usize)> = lengths.iter().copied().zip(0..).collect();
    introsort(&mut v);
    v.into_iter().map(|(_, i)| i).collect()
}

/// "a goes before b": longer first.
fn before(a: &(usize, usize), b: &(usize, usize)) -> bool {
    a.0 > b.0
}

const THRESHOLD: usize = 16;

fn introsort(v: &mut [(usize, usize)]) {
    if v.len() < 2 {
        return;
    }
    let depth = 2 * (usize::BITS - 1 - v.len().leading_zeros()) as usize;
    introsort_loop(v, depth);
    final_insertion_sort(v);
}

fn introsort_loop(mut v: &mut [(usize, usize)], mut depth: usize) {
    while v.len() > THRESHOLD {
        if depth == 0 {
            heap_sort(v);
            return;
        }
        depth -= 1;
        let cut = partition_pivot(v);
        let (left, right) = v.split_at_mut(cut);
        introsort_loop(right, depth);
        v = left;
    }
}

fn partition_pivot(v: &mut [(usize, usize)]) -> usize {
    let last = v.len();
    let mid = last / 2;
    move_median_to_first(v, 1, mid, last - 1);
    unguarded_partition(v, 1, last)
}

fn move_median_to_first(v: &mut [(usize, usize)], a: usize, b: usize, c: usize) {
    let pick = if before(&v[a], &v[b]) {
        if before(&v[b], &v[c]) {
            b
        } else if before(&v[a], &v[c]) {
            c
        } else {
            a
        }
    } else if before(&v[a], &v[c]) {
        a
    } else if before(&v[b], &v[c]) {
        c
    } else {
        b
    };
    v.swap(0, pick);
}

/// Hoare partition around `v[0]`, without bounds checks in the original (the pivot and the
/// median-of-three guarantee a stop).
fn unguarded_partition(v: &mut [(usize, usize)], mut first: usize, mut last: usize) -> usize {
    loop {
        while before(&v[first], &v[0]) {
            first += 1;
        }
        last -= 1;
        while before(&v[0], &v[last]) {
            last -= 1;
        }
        if first >= last {
            return first;
        }
        v.swap(first, last);
        first += 1;
    }
}

fn final_insertion_sort(v: &mut [(usize, usize)]) {
    if v.len() > THRESHOLD {
        insertion_sort(&mut v[..THRESHOLD]);
        for i in THRESHOLD..v.len() {
            unguarded_linear_insert(v, i);
        }
    } else {
        insertion_sort(v);
    }
}

fn insertion_sort(v: &mut [(usize, usize)]) {
    for i in 1..v.len() {
        if before(&v[i], &v[0]) {
            let val = v[i];
            v.copy_within(0..i, 1);
            v[0] = val;
        } else {
            unguarded_linear_insert(v, i);
        }
    }
}

fn unguarded_linear_insert(v: &mut [(usize, usize)], mut last: usize) {
    let val = v[last];
    while before(&val, &v[last - 1]) {
        v[last] = v[last - 1];
        last -= 1;
    }
    v[last] = val;
}

/// `std::__partial_sort(first, last, last)`: make_heap, then sort_heap.
fn heap_sort(v: &mut [(usize, usize)]) {
    let len = v.len();
    if len >= 2 {
        let mut parent = (len - 2) / 2;
        loop {
            let value = v[parent];
            adjust_heap(v, parent, len, value);
            if parent == 0 {
                break;
            }
            parent -= 1;
        }
    }
    let mut last = len;
    while last > 1 {
        last -= 1;
        let value = v[last];
        v[last] = v[0];
        adjust_heap(v, 0, last, value);
    }
}

fn adjust_heap(v: &mut [(usize, usize)], mut hole: usize, len: usize, value: (usize, usize)) {
    let top = hole;
    let mut child = hole;
    while child < (len - 1) / 2 {
        child = 2 * (child + 1);
        if before(&v[child], &v[child - 1]) {
            child -= 1;
        }
        v[hole] = v[child];
        hole = child;
    }
    if len % 2 == 0 && child == (len - 2) / 2 {
        child = 2 * (child + 1);
        v[hole] = v[child - 1];
        hole = child - 1;
    }
    let mut parent = hole.wrapping_sub(1) / 2;
    while hole > top && before(&v[parent], &value) {
        v[hole] = v[parent];
        hole = parent;
        parent = hole.wrapping_sub(1) / 2;
    }
    v[hole] = value;
}

#[cfg(test)]
mod tests {
    use super::length_aware;

    /// `torch.argsort(torch.tensor(x), descending=True).tolist()` from torch 2.14 (CPU).
    #[test]
    fn matches_torch_argsort() {
        assert_eq!(
            length_aware(&[64; 20]),
            [10, 19, 18, 17, 16, 15, 14, 13, 12, 11, 0, 9, 8, 7, 6, 5, 4, 3, 2, 1]
        );
        assert_eq!(length_aware(&[3, 5, 3, 5, 1, 5, 3]), [1, 3, 5, 0, 2, 6, 4]);
        let long: Vec<usize> = [3, 5, 3, 5, 1, 5, 3].repeat(300);
        assert_eq!(
            length_aware(&long)[..20],
            [
                1590, 1583, 775, 773, 1585, 771, 1587, 768, 766, 778, 764, 1592, 761, 1594, 759,
                757, 1597, 754, 780, 1580
            ]
        );
    }
}
