//! The conformance suite on the in-memory broker.
mod conformance;

async fn memory() -> std::sync::Arc<dyn finsight_bus::Transport> {
    std::sync::Arc::new(finsight_bus::MemoryBroker::new())
}

conformance_suite!(memory());
