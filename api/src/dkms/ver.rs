//! DKMS's `VER()` version normalisation and the comparison built on it.

use std::cmp::Ordering;

/// DKMS's `VER()`: pads every run of digits to at least three digits, so that versions
/// compare correctly as plain strings (`2.6.9-1cvs200409091247` →
/// `002.006.009-001cvs200409091247`).
///
/// This reproduces DKMS's `sed` pipeline exactly: digit runs of one or two digits get
/// leading zeros, longer runs (and runs with their own leading zeros) are kept, every
/// other character is kept except spaces, which the pipeline uses as its own separators
/// and deletes. Dots and dashes stay, so `5.10-1` and `5.10.1` are different.
pub fn ver(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        flush_digits(&mut out, &mut digits);
        if c != ' ' {
            out.push(c);
        }
    }
    flush_digits(&mut out, &mut digits);
    out
}

fn flush_digits(out: &mut String, digits: &mut String) {
    if digits.is_empty() {
        return;
    }
    for _ in digits.len()..3 {
        out.push('0');
    }
    out.push_str(digits);
    digits.clear();
}

/// Compares two versions the way DKMS does: byte-wise comparison of their [`ver`] forms.
///
/// A longer string sorts after its prefix, so `4.12` < `4.12-rc1` < `4.12.1`.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    ver(a).cmp(&ver(b))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ver_matches_dkms_sed() {
        // Expected values produced with DKMS's own sed pipeline.
        let cases = [
            ("2.6.9-1cvs200409091247", "002.006.009-001cvs200409091247"),
            ("6.1.0-47-amd64", "006.001.000-047-amd064"),
            ("4.12", "004.012"),
            ("4.12-rc1", "004.012-rc001"),
            ("4.12.1", "004.012.001"),
            ("3.5-rc2", "003.005-rc002"),
            ("0001.5", "0001.005"),
            ("1 2", "001002"),
            ("", ""),
            ("abc", "abc"),
            ("a1b22c333d4444", "a001b022c333d4444"),
            (" x 7 ", "x007"),
            ("6.12.38+deb13-amd64", "006.012.038+deb013-amd064"),
        ];
        for (input, expected) in cases {
            assert_eq!(ver(input), expected, "VER({input:?})");
        }
    }

    #[test]
    fn comparisons_from_the_semantics_notes() {
        use Ordering::*;
        let cases = [
            // MAX "4.12" admits 4.12 and below, excludes 4.12-rc1 and 4.12.1.
            ("4.12", "4.12", Equal),
            ("4.11.9", "4.12", Less),
            ("4.12-rc1", "4.12", Greater),
            ("4.12.1", "4.12", Greater),
            // MIN "3.5" admits 3.5-rc2.
            ("3.5-rc2", "3.5", Greater),
            ("3.4.99", "3.5", Less),
            ("6.1.0-47-amd64", "2.6.39", Greater),
            ("6.1.0-47-amd64", "6.1.0-56-amd64", Less),
            ("5.10-1", "5.10.1", Less),
            ("10.0", "9.99", Greater),
        ];
        for (a, b, expected) in cases {
            assert_eq!(version_cmp(a, b), expected, "{a} vs {b}");
        }
    }
}
