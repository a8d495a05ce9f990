//! Group delivery policies in the engine: saved before the answer, loaded
//! before replay, refused whole when invalid, and a damaged policy file
//! stops the start instead of silently turning FIFO groups into plain ones.

use ferry_broker::GroupPolicy;
use ferry_server::{Engine, ServerConfig};

fn config(dir: &std::path::Path) -> ServerConfig {
    ServerConfig {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    }
}

fn fifo(attempts: u32) -> GroupPolicy {
    GroupPolicy {
        max_delivery_attempts: attempts,
        backoff_ms: vec![1_000, 2_000],
        fifo: true,
    }
}

#[test]
fn policies_survive_a_restart_and_bad_ones_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = Engine::open(&config(dir.path())).unwrap();
        assert_eq!(e.group_policy("g"), GroupPolicy::default());
        e.set_group_policy("g", Some(fifo(5))).unwrap();
        e.set_group_policy("h", Some(fifo(3))).unwrap();
        e.set_group_policy("h", None).unwrap();
        // Refused whole: the saved policy stays.
        assert!(e.set_group_policy("g", Some(fifo(0))).is_err());
        assert!(e.set_group_policy("bad group!", Some(fifo(5))).is_err());
        assert_eq!(e.group_policy("g"), fifo(5));
    }
    let e = Engine::open(&config(dir.path())).unwrap();
    assert_eq!(e.group_policy("g"), fifo(5));
    assert_eq!(e.group_policy("h"), GroupPolicy::default());
    assert_eq!(e.group_policies().len(), 1);
}

#[test]
fn a_damaged_policy_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = Engine::open(&config(dir.path())).unwrap();
        e.set_group_policy("g", Some(fifo(5))).unwrap();
    }
    let path = dir.path().join("meta").join("groups.json");
    let mut raw = std::fs::read(&path).unwrap();
    let last = raw.len() - 4;
    raw[last] ^= 0x01;
    std::fs::write(&path, raw).unwrap();
    let err = Engine::open(&config(dir.path())).err().expect("refused");
    assert!(err.to_string().contains("groups.json"), "{err}");
}

#[test]
fn the_number_of_own_policies_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.core.limits.max_group_policies = 2;
    let e = Engine::open(&c).unwrap();
    e.set_group_policy("a", Some(fifo(5))).unwrap();
    e.set_group_policy("b", Some(fifo(5))).unwrap();
    let err = e.set_group_policy("c", Some(fifo(5))).unwrap_err();
    assert!(err.to_string().contains("at most 2"), "{err}");
    // Changing an existing one is still allowed.
    e.set_group_policy("b", Some(fifo(7))).unwrap();
}
