//! The conformance suite on the real Redis (`FINSIGHT_REDIS_URL`), Streams backend.
#![cfg(feature = "redis-streams")]
mod conformance;

async fn redis_streams() -> std::sync::Arc<dyn finsight_bus::Transport> {
    let mut cfg =
        finsight_bus::redis_streams::RedisStreamsConfig::new(finsight_testkit::redis_url());
    cfg.key_prefix = format!("{}:", finsight_testkit::unique("bus"));
    std::sync::Arc::new(
        finsight_bus::redis_streams::RedisStreams::connect(cfg)
            .await
            .expect("Redis at FINSIGHT_REDIS_URL"),
    )
}

conformance_suite!(redis_streams());
