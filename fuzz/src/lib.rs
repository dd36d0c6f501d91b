//! What the fuzz targets share: the character rules of the client contract
//! restated from `docs/api.md` (not from `chat_core::validate`, so a slip
//! there is caught here), and a way to run the gateway's async extractor.

use std::future::Future;
use std::sync::OnceLock;

/// Unicode category Cc: C0, DEL, C1.
pub fn is_cc(c: char) -> bool {
    matches!(u32::from(c), 0..=0x1F | 0x7F..=0x9F)
}

/// Bidi embeddings, overrides and isolates.
pub fn is_bidi_override(c: char) -> bool {
    matches!(u32::from(c), 0x202A..=0x202E | 0x2066..=0x2069)
}

/// Opaque strings (`client_msg_id`, `q`): no control character at all.
pub fn token_ok(s: &str) -> bool {
    !s.chars().any(is_cc)
}

/// Bodies and topics: newline and tab, no other control character, no bidi
/// embedding, override or isolate.
pub fn free_text_ok(s: &str) -> bool {
    !s.chars()
        .any(|c| (is_cc(c) && c != '\n' && c != '\t') || is_bidi_override(c))
}

/// Names: no control character, line or paragraph separator, bidi
/// formatting character or zero-width character.
pub fn name_ok(s: &str) -> bool {
    !s.chars().any(|c| {
        is_cc(c)
            || is_bidi_override(c)
            || matches!(
                u32::from(c),
                0x2028 | 0x2029 | 0x200E | 0x200F | 0x061C | 0x200B..=0x200D | 0x2060 | 0xFEFF
            )
    })
}

/// Characters, as every length rule of the contract counts them.
pub fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Runs `f` to completion on one runtime kept for the whole run.
pub fn block_on<F: Future>(f: F) -> F::Output {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime builds")
    })
    .block_on(f)
}
