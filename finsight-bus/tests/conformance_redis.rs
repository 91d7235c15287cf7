//! The conformance suite on the real Redis (`FINSIGHT_REDIS_URL`), Streams backend.
#![cfg(feature = "redis-streams")]
mod conformance;

async fn redis_streams() -> std::sync::Arc<dyn finsight_bus::Transport> {
    let mut cfg =
        finsight_bus::redis_streams::RedisStreamsConfig::new(finsight_testkit::redis_url());
    cfg.key_prefix = format!("{}:", finsight_testkit::unique("bus"));
    // An entry left pending (a dead letter that could not be written) comes
    // back after `claim_min_idle`; the 30 s default made
    // `unroutable_dead_letter_keeps_the_message` wait ~35 s. 2 s stays above
    // the longest handling in the suite (300 ms), so no entry still being
    // handled is reclaimed.
    cfg.claim_min_idle = std::time::Duration::from_secs(2);
    cfg.claim_interval = std::time::Duration::from_millis(250);
    std::sync::Arc::new(
        finsight_bus::redis_streams::RedisStreams::connect(cfg)
            .await
            .expect("Redis at FINSIGHT_REDIS_URL"),
    )
}

conformance_suite!(redis_streams());
