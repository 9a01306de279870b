//! A tcp frame's length prefix is a claim by an unauthenticated sender: reading a frame must
//! not set aside memory for bytes that never arrive. The allocator here counts the largest
//! amount live at once while one frame is read (this file is its own test binary).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use mesh_gossip::wire::{MAX_FRAME, read_frame};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counters only
// observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(live, Ordering::SeqCst);
        // SAFETY: same contract as the caller's: `layout` has a non-zero size.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: `ptr` was allocated by `alloc` above with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn a_frame_header_alone_does_not_reserve_the_claimed_length() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let claimed = u32::try_from(MAX_FRAME).unwrap();
    let mut input = claimed.to_be_bytes().to_vec();
    input.extend_from_slice(b"only a few bytes follow");
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let result = rt.block_on(read_frame(&mut input.as_slice()));
    let peak = PEAK.load(Ordering::SeqCst) - before;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(
        peak < MAX_FRAME / 64,
        "reading a {MAX_FRAME}-byte claim with 23 bytes behind it held {peak} bytes at once"
    );
}
