//! A message never allocates more than its declared and permitted length: a
//! counting allocator watches the largest single allocation while hostile frames
//! are decoded. One test in this binary, so no other test's allocations count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use rpc::limits::{
    COMMIT_TRANS_MAX, DIRTY_PER_REPLY_MAX, HEADER_LEN, IN_DOUBT_PER_REPLY_MAX, MEMBERS_MAX,
    STAT_COUNTERS_MAX,
};
use rpc::{Header, MsgType, Status, decode_frame, decode_header, forge, payload_crc};

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; it only records
// the size asked for.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as it is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on as it is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn frame(msg_type: MsgType, status: Status, payload_len: u32, payload: &[u8]) -> Vec<u8> {
    let h = Header {
        version: 1,
        msg_type,
        response: true,
        status,
        tag: 1,
        handle: 0,
        offset: 0,
        length: 0,
        payload_len,
        payload_crc: payload_crc(payload),
    };
    let mut v = h.encode().to_vec();
    v.extend_from_slice(payload);
    v
}

/// Largest allocation made while `f` runs.
fn largest_during(f: impl FnOnce()) -> usize {
    LARGEST.store(0, Ordering::Relaxed);
    f();
    LARGEST.load(Ordering::Relaxed)
}

#[test]
fn hostile_lengths_and_counts_allocate_nothing_large() {
    // A header claiming a 4 GiB payload, nothing behind it.
    let mut v = frame(MsgType::Read, Status::Ok, 0, b"");
    forge::set(
        v.first_chunk_mut::<HEADER_LEN>().unwrap(),
        forge::PAYLOAD_LEN_AT,
        &u32::MAX.to_le_bytes(),
    );
    let got = largest_during(|| {
        assert!(decode_header(&v).is_err());
        assert!(decode_frame(&v).is_err());
    });
    assert!(got < 4096, "decoding a 4 GiB claim allocated {got} bytes");

    // STAT claiming the most counters, with bytes for none: refused before any
    // list is reserved.
    let mut p = (STAT_COUNTERS_MAX as u32).to_le_bytes().to_vec();
    p.extend_from_slice(&[0; 4]);
    let v = frame(MsgType::Stat, Status::Ok, p.len() as u32, &p);
    let got = largest_during(|| assert!(decode_frame(&v).is_err()));
    assert!(got < 1024, "STAT count claim allocated {got} bytes");

    // VSSD_RECOVER claiming u32::MAX, and the limit, with a few bytes.
    for count in [u32::MAX, IN_DOUBT_PER_REPLY_MAX as u32] {
        let mut p = count.to_le_bytes().to_vec();
        p.extend_from_slice(&[0; 4 + 48]);
        let v = frame(MsgType::VssdRecover, Status::Ok, p.len() as u32, &p);
        let got = largest_during(|| assert!(decode_frame(&v).is_err()));
        assert!(got < 1024, "RECOVER count {count} allocated {got} bytes");
    }

    // VSSD_DIRTY's reply, VSSD_COMMIT's and VSSD_EPOCH's requests claiming u32::MAX
    // and their limits, with a few bytes.
    for (t, response, limit, prefix) in [
        (MsgType::VssdDirty, true, DIRTY_PER_REPLY_MAX, 0),
        (MsgType::VssdCommit, false, COMMIT_TRANS_MAX, 0),
        (MsgType::VssdEpoch, false, MEMBERS_MAX, 8),
    ] {
        for count in [u32::MAX, limit as u32] {
            let mut p = vec![0u8; prefix];
            p.extend_from_slice(&count.to_le_bytes());
            p.extend_from_slice(&[0; 4 + 24]);
            let h = Header {
                version: 1,
                msg_type: t,
                response,
                status: Status::Ok,
                tag: 9,
                handle: u64::from(!response),
                offset: 0,
                length: 0,
                payload_len: p.len() as u32,
                payload_crc: payload_crc(&p),
            };
            let mut v = h.encode().to_vec();
            v.extend_from_slice(&p);
            let got = largest_during(|| assert!(decode_frame(&v).is_err()));
            assert!(got < 1024, "{t} count {count} allocated {got} bytes");
        }
    }

    // A valid 2-entry RECOVER reply allocates about 2 entries, not the limit.
    let mut p = 2u32.to_le_bytes().to_vec();
    p.extend_from_slice(&[0; 4]);
    for tran in 1..=2u64 {
        p.extend_from_slice(&tran.to_le_bytes());
        p.extend_from_slice(&[1; 8]); // line
        p.extend_from_slice(&1u32.to_le_bytes()); // line_count
        p.extend_from_slice(&4096u32.to_le_bytes()); // payload_len
        p.extend_from_slice(&[0; 8]); // flags, reserved
    }
    let v = frame(MsgType::VssdRecover, Status::Ok, p.len() as u32, &p);
    let got = largest_during(|| {
        decode_frame(&v).unwrap();
    });
    assert!(got <= 2 * 32, "2-entry RECOVER allocated {got} bytes");

    // A 1 MiB data payload decodes by borrowing: no copy.
    let data = vec![7u8; 1 << 20];
    let h = Header {
        version: 1,
        msg_type: MsgType::Write,
        response: false,
        status: Status::Ok,
        tag: 9,
        handle: 1,
        offset: 0,
        length: 1 << 20,
        payload_len: 1 << 20,
        payload_crc: payload_crc(&data),
    };
    let mut v = h.encode().to_vec();
    v.extend_from_slice(&data);
    let got = largest_during(|| {
        decode_frame(&v).unwrap();
    });
    assert!(got < 1024, "decoding a 1 MiB WRITE allocated {got} bytes");
}
