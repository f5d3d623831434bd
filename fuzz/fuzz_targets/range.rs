//! `RangeSpec::parse` and `resolve`: the first eight bytes are the blob's size, the rest the
//! `Range` header. What parses must resolve exactly as RFC 9110 says, inside the blob.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullgate_oci::{RangeError, RangeSpec};

fn render(spec: RangeSpec) -> String {
    match spec {
        RangeSpec::FromTo(a, b) => format!("bytes={a}-{b}"),
        RangeSpec::From(a) => format!("bytes={a}-"),
        RangeSpec::Suffix(n) => format!("bytes=-{n}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((size, header)) = data.split_first_chunk::<8>() else {
        return;
    };
    let size = u64::from_le_bytes(*size);
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    let Ok(spec) = RangeSpec::parse(header) else {
        return;
    };
    // The unit in any case (RFC 9110 section 14.1), then `=`.
    assert!(
        header
            .trim()
            .get(..6)
            .is_some_and(|unit| unit.eq_ignore_ascii_case("bytes=")),
        "{header:?}"
    );
    assert_eq!(RangeSpec::parse(&render(spec)), Ok(spec));
    if let RangeSpec::FromTo(a, b) = spec {
        assert!(a <= b);
    }
    let expected = match spec {
        RangeSpec::FromTo(a, b) if a < size => Some((a, b.min(size - 1))),
        RangeSpec::From(a) if a < size => Some((a, size - 1)),
        RangeSpec::Suffix(n) if n > 0 && size > 0 => Some((size - n.min(size), size - 1)),
        _ => None,
    };
    match spec.resolve(size) {
        Ok(r) => {
            assert_eq!(Some((r.start, r.end)), expected, "{spec:?} of {size}");
            assert!(r.start <= r.end && r.end < size);
            assert_eq!(r.len(), r.end - r.start + 1);
            assert_eq!(
                r.content_range(size),
                format!("bytes {}-{}/{size}", r.start, r.end)
            );
        }
        Err(e) => {
            assert_eq!(e, RangeError::Unsatisfiable);
            assert_eq!(expected, None, "{spec:?} of {size}");
        }
    }
});
