//! The conformance suite on the real RabbitMQ (`FINSIGHT_AMQP_URL`).
#![cfg(feature = "rabbitmq")]
mod conformance;

async fn rabbit() -> std::sync::Arc<dyn finsight_bus::Transport> {
    let cfg = finsight_bus::rabbitmq::RabbitConfig::new(finsight_testkit::amqp_url());
    std::sync::Arc::new(
        finsight_bus::rabbitmq::RabbitMq::connect(cfg)
            .await
            .expect("RabbitMQ at FINSIGHT_AMQP_URL"),
    )
}

conformance_suite!(rabbit());
