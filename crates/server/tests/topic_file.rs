//! The topic file: a file written before topics had message types loads
//! with every type accepted, and is rewritten with the types and where each
//! topic began.

use ferry_broker::MessageTypes;
use ferry_server::{Engine, ServerConfig};

#[test]
fn an_old_topic_file_loads_as_accepting_every_type() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("meta");
    std::fs::create_dir_all(&meta).unwrap();
    let path = meta.join("topics.json");
    let old = serde_json::json!({"topics": [{"name": "old", "queues": 3}]});
    ferry_store::meta::write(&path, &old).unwrap();
    let config = ServerConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let e = Engine::open(&config).unwrap();
    assert_eq!(e.ensure_topic("old").unwrap(), (3, MessageTypes::ALL));
    let types = MessageTypes::parse(&["FIFO"]).unwrap();
    let t = e.create_topic("new", Some(2), Some(types)).unwrap();
    assert!(t.created);
    drop(e);
    let saved: serde_json::Value = ferry_store::meta::read(&path).unwrap().unwrap();
    let topics = saved["topics"].as_array().unwrap();
    assert_eq!(topics[0]["name"], "new");
    assert_eq!(topics[0]["message_types"], serde_json::json!(["FIFO"]));
    assert_eq!(topics[1]["name"], "old");
    assert_eq!(
        topics[1]["message_types"],
        serde_json::json!(["NORMAL", "FIFO", "DELAY", "TRANSACTION"])
    );
    assert_eq!(topics[1]["created_at"], 0);
    let e = Engine::open(&config).unwrap();
    assert_eq!(e.ensure_topic("new").unwrap(), (2, types));
}
