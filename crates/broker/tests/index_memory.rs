//! What the message index costs in memory, measured: a counting allocator
//! wraps the system one, and the heap growth over a million indexed
//! messages (one key each) is divided by the entries. ARCHITECTURE.md
//! quotes the figure this prints:
//!
//! `cargo test -p ferry-broker --test index_memory -- --nocapture`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use ferry_broker::message_index::MessageIndex;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn an_index_entry_costs_under_40_bytes() {
    const MESSAGES: u64 = 1_000_000;
    // Ids and keys made up front, so only the index's growth is measured.
    let ids: Vec<String> = (0..MESSAGES).map(|i| format!("01{i:032X}")).collect();
    let keys: Vec<Vec<String>> = (0..MESSAGES).map(|i| vec![format!("order-{i}")]).collect();
    let before = LIVE.load(Ordering::Relaxed);
    let mut ix = MessageIndex::default();
    for (i, (id, k)) in ids.iter().zip(&keys).enumerate() {
        ix.add(i as u64 * 200, id, k);
    }
    let grown = LIVE.load(Ordering::Relaxed) - before;
    let (by_id, by_key) = ix.len();
    let entries = (by_id + by_key) as f64;
    let per_entry = grown as f64 / entries;
    println!(
        "message index: {MESSAGES} messages with one key, {entries} entries, {grown} bytes: {per_entry:.1} bytes per entry"
    );
    assert_eq!((by_id, by_key), (MESSAGES as usize, MESSAGES as usize));
    assert!(per_entry < 40.0, "{per_entry:.1} bytes per entry");
}
