//! The outage guards really stop the services and always bring them back.

use finsight_testkit::{RabbitOutage, RedisOutage, amqp_host_port, port_open, redis_host_port};

#[test]
fn outage_redis_guard_stops_and_restores() {
    let (host, port) = redis_host_port();
    {
        let mut outage = RedisOutage::stop().expect("stop redis");
        assert!(!port_open(&host, port), "redis still accepts connections");
        outage.start().expect("start redis");
        assert!(port_open(&host, port));
        outage.stop_again().expect("stop redis again");
        assert!(!port_open(&host, port));
        // dropped while down: Drop must restore it
    }
    assert!(port_open(&host, port), "drop did not restore redis");
}

#[test]
fn outage_redis_guard_restores_after_a_panic() {
    let (host, port) = redis_host_port();
    let result = std::panic::catch_unwind(|| {
        let _outage = RedisOutage::stop().expect("stop redis");
        panic!("a failing fault test");
    });
    assert!(result.is_err());
    assert!(port_open(&host, port), "redis not restored after a panic");
}

#[test]
fn outage_rabbitmq_guard_stops_and_restores() {
    let (host, port) = amqp_host_port();
    {
        let _outage = RabbitOutage::stop().expect("stop rabbitmq");
        assert!(
            !port_open(&host, port),
            "rabbitmq still accepts connections"
        );
    }
    assert!(port_open(&host, port), "drop did not restore rabbitmq");
}
