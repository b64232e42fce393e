//! Golden tables (tests only): the numbers and names of an enum that
//! indexes a pinned map and labels metrics, written down once. A row never
//! changes; a new variant goes at the end with the next number.

/// A golden table `[(variant, number, name)]`, one row per variant. It
/// does not compile while a variant of the enum has no row.
macro_rules! golden {
    ($enum:ident { $($variant:ident = $number:literal, $name:literal;)* }) => {{
        #[allow(dead_code)]
        fn every_variant_has_a_row(v: $enum) {
            match v {
                $($enum::$variant => {})*
            }
        }
        [$(($enum::$variant, $number, $name)),*]
    }};
}
pub(crate) use golden;

/// The enum agrees with its golden table: every variant has the row's
/// number and name, `ALL` lists exactly the rows in their order, the
/// numbers are dense from 0 (they index per-CPU arrays of `COUNT`
/// entries), and names are unique.
pub(crate) fn check<T: Copy + PartialEq + core::fmt::Debug>(
    golden: &[(T, u32, &str)],
    all: &[T],
    count: u32,
    number: fn(T) -> u32,
    name: fn(T) -> &'static str,
) {
    assert_eq!(all.len(), golden.len(), "ALL has {} variants, the golden table {}", all.len(), golden.len());
    assert_eq!(count as usize, golden.len(), "COUNT");
    for (i, (&(variant, n, label), &listed)) in golden.iter().zip(all).enumerate() {
        assert_eq!(n, i as u32, "golden row {i} ({variant:?}): numbers are dense and in order");
        assert_eq!(number(variant), n, "{variant:?} renumbered");
        assert_eq!(name(variant), label, "{variant:?} renamed");
        assert_eq!(listed, variant, "ALL[{i}]");
    }
    for (i, (_, _, a)) in golden.iter().enumerate() {
        assert!(golden[i + 1..].iter().all(|(_, _, b)| a != b), "name {a} used twice");
    }
}
