//! A plain producer and consumer.
//!
//! ```sh
//! cargo run --release -- serve &
//! cargo run -p ferry-examples --example quickstart -- 127.0.0.1:8081
//! ```

use std::time::Duration;

use ferry_client::{
    ClientConfig, ConsumeResult, FilterExpression, Message, Producer, PushConsumer,
    ReceivedMessage, SimpleConsumer,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".into());
    let config = ClientConfig::new(endpoint);

    // Send: one message, then a batch of five.
    let producer = Producer::builder(config.clone())
        .topics(["quickstart"])
        .start()
        .await?;
    let receipt = producer
        .send(
            Message::new("quickstart", "hello")
                .with_tag("greeting")
                .with_key("hello-1")
                .with_property("lang", "en"),
        )
        .await?;
    println!("sent {}", receipt.message_id);
    let batch = (1..=5)
        .map(|i| Message::new("quickstart", format!("item {i}")).with_tag("item"))
        .collect();
    for r in producer.send_batch(batch).await? {
        println!(
            "sent {} (queue {}, offset {})",
            r.message_id, r.queue_id, r.offset
        );
    }

    // Pull style: receive, then ack each.
    let simple = SimpleConsumer::builder(config.clone(), "quickstart-greeter")
        .subscribe("quickstart", FilterExpression::tag("greeting"))
        .await_duration(Duration::from_secs(2))
        .start()
        .await?;
    for m in simple.receive(16, Duration::from_secs(30)).await? {
        println!("greeter got {:?} (attempt {})", m.body, m.delivery_attempt);
        simple.ack(&m).await?;
    }
    simple.shutdown().await;

    // Push style: a handler per message; success acks it.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<String>(16);
    let push = PushConsumer::builder(config, "quickstart-items")
        .subscribe("quickstart", FilterExpression::tag("item"))
        .max_concurrency(4)
        .start(move |m: ReceivedMessage| {
            let done = done_tx.clone();
            async move {
                let _ = done
                    .send(String::from_utf8_lossy(&m.body).into_owned())
                    .await;
                ConsumeResult::Success
            }
        })
        .await?;
    for _ in 0..5 {
        match tokio::time::timeout(Duration::from_secs(30), done_rx.recv()).await {
            Ok(Some(body)) => println!("handler got {body:?}"),
            _ => return Err("the push consumer did not get every item".into()),
        }
    }
    push.shutdown().await;
    producer.shutdown().await;
    Ok(())
}
